"""The stream consumer: one class for the worker (bulk) and priority (live) services.

Per partition ``p`` one reader task runs its own blocking ``XREADGROUP`` on
``chat:{p}:<class>`` (never one read over several partitions: that would be a
cross-slot command in Redis Cluster), and handles each batch in order::

    XREADGROUP batch ─> decode ─> enrich ─> MessageStore.insert ─> publish ─> XACK
                          │                      │
                          └─ malformed ──────────┴─ rejected by Mongo ──> chat:{p}:dead

* **At-least-once + idempotent insert = exactly-once storage.** Entries are acked only
  after their documents are stored (a duplicate-key error means "already stored" and
  counts as success) and their frames handed to the fan-out. A crash anywhere before
  XACK leaves the entries pending in the group; they are redelivered and the insert is a
  no-op the second time. Publishing duplicates is harmless: clients key on ``seq``.
* **Infrastructure errors never ack and never dead-letter.** While Mongo, SQL, S3 or Redis
  is unreachable the batch is kept and retried with capped exponential backoff
  (``chat_store_retries_total``); the consumer refreshes its claim on the batch
  (``XCLAIM … JUSTID``, which does not count a delivery) so no other consumer steals it
  and no outage ever pushes an entry towards ``max_deliveries``.
* **Poison goes to the dead-letter stream, counted** (``chat_dead_lettered_total``):
  an entry that cannot be decoded, a document Mongo rejects for a reason other than a
  duplicate key, and an entry delivered more than ``max_deliveries`` times (it crashed
  that many consumers). Dead-lettering is one script per batch that XACKs and, only if
  the XACK removed the entry, XADDs it with the reason to ``chat:{p}:dead``: replaying
  the script after a lost reply adds nothing twice. The consumer never trims a
  dead-letter stream: operators inspect and clear it (alarm on the counter).
* **Dead consumers' entries are reclaimed** by a periodic ``XAUTOCLAIM`` of entries idle
  longer than ``claim_idle_ms``; a consumer restarted under the same name first re-reads
  its own pending entries.
* **Streams stay bounded.** A sweep script trims acknowledged entries
  (``XTRIM MINID`` to the oldest pending id, or past the last delivered id when nothing is
  pending: entries not yet delivered are never trimmed) and reports the lag
  (``XINFO GROUPS`` lag + ``XPENDING`` count), at most every ``trim_interval_s`` per
  partition.
* **The worker never hogs the database.** Both classes insert into the same collection
  on the same writer (one SecantusDB collection lock locally, one DocumentDB writer in
  AWS), so a live insert waits behind whatever bulk inserts are ahead of it. Two knobs
  bound that wait: a process-wide limit on concurrent inserts (``max_inflight_inserts``,
  a semaphore shared by the partition readers) and an insert time budget
  (``insert_budget_ms``) that a :class:`BatchSizer` keeps each insert within by
  adapting the XREADGROUP COUNT (AIMD). A live insert then waits behind at most
  ``worker processes x max_inflight_inserts x insert_budget_ms`` of bulk work, while
  bulk keeps the rest of the database's capacity. A batch read before the size shrank
  is inserted in chunks of the current size, each chunk taking a slot of its own.
  Those bound the *longest* wait; the *typical* one is how often the writer is busy
  when a live insert arrives. An :class:`InsertPacing` hook closes that loop
  (:mod:`chat.pressure`): the priority reports its insert times through it, and the
  worker's hook holds each insert back so its share of the writer's time drops while
  live inserts are slow.
* **Graceful stop.** ``stop`` is checked between batches: the batch in hand is finished
  (persisted, published, acked), then the reader exits. An idle reader notices within
  ``block_ms``. A batch cut short by cancellation stays pending and is reclaimed.

Hot-path costs are per batch, not per message: one read, one enrichment lookup (cached),
one ``insert_many`` (per chunk), one XACK; the only per-message work is decoding, building
the document and the frame (encoded once) and a non-blocking ZeroMQ send. The in-flight
limit and the batch sizer cost one semaphore round and a few comparisons per insert.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import botocore.exceptions
import pymongo.errors
import redis.exceptions
import sqlalchemy.exc

from chat import metrics
from chat.enrich import Enricher
from chat.errors import DecodeError
from chat.keys import KeySpace
from chat.serialization import (
    Attachment,
    MessageFrame,
    Priority,
    QueuedMessage,
    decode_queued,
    encode_frame,
    encode_queued,
)
from chat.storage.mongo import InsertOutcome, NewMessage, StoredAttachment, attachment_url
from chat.timestamps import now_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "a dependency is unreachable or failing over": keep the batch pending
#: and retry. Anything else escaping a batch is a bug: the reader task crashes, the
#: process exits, the supervisor (ECS) restarts it and the batch is redelivered; if it
#: keeps crashing consumers it ends up dead-lettered after ``max_deliveries``.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # failover in progress
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    pymongo.errors.PyMongoError,  # BulkWriteError with only duplicates never gets here
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,  # connection pool exhausted
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,  # S3 5xx/throttling; NotFound is handled in enrich
    OSError,
    TimeoutError,
)

#: Dead-letter a batch of entries atomically per entry: XACK, and XADD to the dead stream
#: only when the XACK removed a pending entry (idempotent if the reply is lost and the
#: script runs again). KEYS: stream, dead. ARGV: group, consumer, then per entry:
#: id, reason, deliveries, nfields, field1, value1, ...
DEAD_LETTER_LUA = """
local i = 3
local moved = 0
while i <= #ARGV do
  local id, reason, deliveries, nf = ARGV[i], ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3])
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    local args = {'XADD', KEYS[2], '*', 'src', id, 'stream', KEYS[1], 'reason', reason,
                  'consumer', ARGV[2], 'deliveries', deliveries}
    for j = 1, nf * 2 do args[#args + 1] = ARGV[i + 3 + j] end
    redis.call(unpack(args))
    moved = moved + 1
  end
  i = i + 4 + nf * 2
end
return moved
"""

#: Forget consumers of a group that hold nothing and have not read for ARGV[3] ms: the
#: names of crashed or replaced tasks (every process joins as hostname-pid). Atomic, so a
#: consumer cannot get pending entries between the check and the delete; one with
#: pending entries is never removed (that would drop them from the pending list).
#: KEYS: stream. ARGV: group, own name, idle ms. Returns how many were removed.
FORGET_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

#: Trim acknowledged entries and report the lag of one group on one stream.
#: KEYS: stream. ARGV: group, trim (1|0).
#: Returns {pending, undelivered, oldest unacked id or '', trimmed}.
SWEEP_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, '', 0} end
local last = nil
local lag = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then
    last = info['last-delivered-id']
    lag = info['lag']
  end
end
if last == nil then return {0, 0, '', 0} end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local pending = p[1]
local minid
if pending > 0 then
  minid = p[2]
else
  local dash = string.find(last, '-', 1, true)
  minid = string.sub(last, 1, dash - 1) .. '-' ..
          string.format('%.0f', tonumber(string.sub(last, dash + 1)) + 1)
end
local trimmed = 0
if ARGV[2] == '1' then trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid) end
if not lag then lag = math.max(redis.call('XLEN', KEYS[1]) - pending, 0) end
local oldest = ''
if pending > 0 then
  oldest = p[2]
else
  local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
  if #first > 0 then oldest = first[1][1] end
end
return {pending, lag, oldest, trimmed}
"""

#: A raw entry as redis-py returns it: (stream id, fields) with fields None when the
#: entry was deleted while pending.
RawEntry = tuple[bytes, dict[bytes, bytes] | None]


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How one consumer class reads its streams. What each knob costs:

    ``priority``        which streams (``live`` or ``bulk``) and which group drain them.
    ``group``           the consumer group; every process of a class joins the same one.
    ``consumer``        this process's name in the group. A restart under the same name
                        first re-reads its own pending entries; a new name leaves them to
                        be reclaimed after ``claim_idle_ms``.
    ``batch``           entries per XREADGROUP per partition. Larger amortises the read,
                        insert and ack round trips over more messages (throughput), but a
                        batch is stored and published as a unit: it is latency for its
                        first message, and the work redone after a crash.
    ``block_ms``        XREADGROUP BLOCK. Bounds the shutdown latency of an idle reader
                        and how late an idle reader runs its reclaim/trim sweeps; shorter
                        costs one empty round trip per partition per ``block_ms``.
    ``claim_idle_ms``   the visibility timeout: a dead consumer's pending entries wait this
                        long before another consumer reclaims them (the latency a crash
                        adds). Too short and a slow but alive consumer's batch is processed
                        twice (wasted work, not wrong: storage is idempotent); a consumer
                        retrying through an outage refreshes its claim, so outages do not
                        count.
    ``max_deliveries``  deliveries before an entry is dead-lettered. Each delivery past the
                        first means a consumer died holding it; too low dead-letters
                        messages caught in unrelated crashes, too high lets a poison entry
                        crash-loop consumers longer.
    ``trim_interval_s`` minimum spacing of the trim + lag sweep per partition (one script
                        call); the stream holds up to this much acknowledged backlog.
    ``retry_initial_s``, ``retry_max_s``
                        backoff while a dependency is down: the first retry is quick, the
                        cap bounds how late recovery is noticed.
    ``forget_idle_ms``  a consumer name holding nothing and silent this long is removed
                        from the group at the next reclaim run (crashed or replaced
                        tasks). Must be far above ``block_ms``: a live reader touches its
                        name at least every ``block_ms``.
    ``stuck_after_s``   a reader that made no progress (not even a failed retry) for this
                        long makes the process unhealthy, so it is restarted.
    ``max_inflight_inserts``
                        store inserts this process runs at once, over all its partition
                        readers (None: one per reader, unlimited). It is how much of the
                        shared database writer this process may occupy: each slot adds up
                        to one insert (``insert_budget_ms``) to the wait of every other
                        writer, live included. Fewer slots cost bulk throughput (the
                        database idles during the worker's own round trips between two
                        inserts, and cannot overlap inserts where it could, e.g. sharded)
                        and leave the other readers' batches waiting, read but unacked
                        (bulk latency, not loss). The live class keeps None: its inserts
                        are a few documents, and a limit would queue live behind live.
    ``insert_budget_ms``
                        target duration of one insert (None: fixed ``batch``). The batch
                        size adapts so an insert stays within it: halved after an insert
                        over budget, grown by a quarter after a full one under half of it.
                        Lower keeps live waits shorter but costs a round trip and the
                        per-insert overhead more often (bulk throughput); the database
                        must be able to insert ``min_batch`` documents within it.
    ``min_batch``       the floor of the adaptive batch size (and where it starts, so a
                        restart does not open with ``batch``-sized inserts). Too low and a
                        slow database drives bulk into one-document inserts (round-trip
                        bound); too high and the budget cannot be met.
    """

    priority: Priority
    group: str
    consumer: str
    batch: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    trim_interval_s: float = 1.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 5.0
    stuck_after_s: float = 120.0
    forget_idle_ms: int = 3_600_000
    max_inflight_inserts: int | None = None
    insert_budget_ms: float | None = None
    min_batch: int = 1

    def __post_init__(self) -> None:
        if self.max_inflight_inserts is not None and self.max_inflight_inserts < 1:
            raise ValueError("max_inflight_inserts must be >= 1 or None")
        if self.insert_budget_ms is not None and self.insert_budget_ms <= 0:
            raise ValueError("insert_budget_ms must be > 0 or None")
        if not 1 <= self.min_batch <= self.batch:
            raise ValueError("min_batch must be between 1 and batch")

    @property
    def claim_interval_s(self) -> float:
        """How often a reader runs XAUTOCLAIM: twice per visibility timeout."""
        return self.claim_idle_ms / 2000


@dataclass(slots=True)
class BatchSizer:
    """AIMD control of the batch size, so that one insert stays within a time budget.

    An insert slower than the budget halves the size (the writer is busy: back off fast);
    a full-size insert faster than half the budget grows it by a quarter (there is room:
    probe slowly); the size stays within [``low``, ``high``] and starts at ``low``.
    Without a budget the size is ``high`` and never changes. One sizer per consumer:
    every reader of a process inserts into the same database, so they share the signal.
    Pure logic (no clock, no I/O): the caller times the insert and reports it.
    """

    low: int
    high: int
    budget_s: float | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got {self.low}, {self.high}")
        if self.budget_s is None:
            self.size = self.high
        elif self.size == 0:
            self.size = self.low
        else:
            self.size = min(max(self.size, self.low), self.high)

    def observe(self, seconds: float, documents: int) -> bool:
        """Report one insert of ``documents`` that took ``seconds``; True if the size
        changed."""
        budget = self.budget_s
        if budget is None:
            return False
        before = self.size
        if seconds > budget:
            self.size = max(self.low, before // 2)
        elif seconds < budget / 2 and documents >= before:
            self.size = min(self.high, before + max(1, before // 4))
        return self.size != before


class Store(Protocol):
    """:class:`chat.storage.mongo.MessageStore` as the consumer sees it (benchmarks swap
    in a store without a database behind it)."""

    async def ensure_indexes(self) -> None: ...

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome: ...


class Sink(Protocol):
    """:class:`chat.fanout.Publisher` as the consumer sees it."""

    def publish(self, chat_id: int, payload: bytes) -> None: ...


class InsertPacing(Protocol):
    """Told about every insert, may hold the next one back (:mod:`chat.pressure`: the
    priority reports its insert times, the worker yields the database to them)."""

    def delay(self, now: float) -> float:
        """Seconds the next insert should wait (``now``: ``time.perf_counter()``)."""
        ...

    def inserted(self, started: float, ended: float) -> None:
        """A successful insert ran from ``started`` to ``ended`` (perf_counter)."""
        ...


#: The longest one insert is held back by its pacing: bounds how late a batch in hand
#: is finished after a stop, whatever the database did before.
MAX_PACING_DELAY_S = 1.0


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one consumer since it started (heartbeat, summary log)."""

    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    retries: int = 0
    cancelled: int = 0
    batches: int = 0


@dataclass(slots=True)
class _Partition:
    """One reader's state."""

    index: int
    key: str
    dead: str
    progress: float
    next_claim: float
    next_sweep: float = 0.0
    dirty: bool = True
    unacked: int = 0
    oldest_age_s: float = 0.0
    lease_at: float = 0.0
    read_failures: int = 0


@dataclass(slots=True)
class _Batch:
    """A read batch split by fate."""

    ids: list[bytes] = field(default_factory=list)
    messages: list[tuple[QueuedMessage, int, int]] = field(default_factory=list)
    dead: list[tuple[bytes, dict[bytes, bytes], str, int]] = field(default_factory=list)
    gone: list[bytes] = field(default_factory=list)


class Consumer:
    """Drains one stream class of every partition into the store and the fan-out."""

    def __init__(
        self,
        redis: Any,
        keyspace: KeySpace,
        options: ConsumerOptions,
        *,
        store: Store,
        enricher: Enricher,
        sink: Sink,
        partitions: Sequence[int] | None = None,
        pacing: InsertPacing | None = None,
    ) -> None:
        self._redis = redis
        self._pacing = pacing
        self._keyspace = keyspace
        self.options = options
        self._store = store
        self._enricher = enricher
        self._sink = sink
        self._dead_letter: Any = redis.register_script(DEAD_LETTER_LUA)
        self._forget: Any = redis.register_script(FORGET_LUA)
        self._sweep_script: Any = redis.register_script(SWEEP_LUA)
        indices = range(keyspace.partitions) if partitions is None else partitions
        now = time.monotonic()
        self._parts = [self._partition(p, now) for p in indices]
        self.stats = ConsumerStats()
        #: dependency name -> monotonic time of its first failure in the current outage
        self.failing: dict[str, float] = {}
        prio = options.priority
        self._m_persisted = metrics.PERSISTED.labels(prio)
        self._m_latency = metrics.ACCEPT_TO_PUBLISH.labels(prio)
        self._m_lag = metrics.STREAM_LAG.labels(prio)
        self._m_stage = {
            s: metrics.STAGE_SECONDS.labels(s)
            for s in ("read", "decode", "enrich", "store", "insert_wait", "publish", "ack")
        }
        budget = options.insert_budget_ms
        self.sizer = BatchSizer(
            low=options.min_batch,
            high=options.batch,
            budget_s=None if budget is None else budget / 1000,
        )
        self._m_batch_target = metrics.BATCH_TARGET.labels(prio)
        self._m_batch_target.set(self.sizer.size)
        limit = options.max_inflight_inserts
        self._insert_slots = None if limit is None else asyncio.Semaphore(limit)
        #: store inserts running now, and the most there ever were at once
        self.inflight_inserts = 0
        self.inflight_peak = 0

    def _partition(self, p: int, now: float) -> _Partition:
        keys = self._keyspace.partition(p)
        return _Partition(
            index=p,
            key=keys.stream(self.options.priority),
            dead=keys.dead,
            progress=now,
            next_claim=now + self.options.claim_interval_s,
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Consume every partition until ``stop``; the batches in hand are finished."""
        opts = self.options
        await self._retry("mongo", self._store.ensure_indexes)
        log.info(
            "consumer started",
            extra={
                "group": opts.group,
                "consumer": opts.consumer,
                "partitions": len(self._parts),
                "batch": opts.batch,
                "block_ms": opts.block_ms,
                "max_inflight_inserts": opts.max_inflight_inserts,
                "insert_budget_ms": opts.insert_budget_ms,
            },
        )
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                for part in self._parts:
                    tg.create_task(self._run_partition(part, stop), name=f"reader-{part.index}")
        finally:
            s = self.stats
            log.info(
                "consumer stopped",
                extra={
                    "group": opts.group,
                    "consumer": opts.consumer,
                    "processed": s.processed,
                    "failed": s.dead_lettered,
                    "cancelled": s.cancelled,
                    "duplicates": s.duplicates,
                    "reclaimed": s.reclaimed,
                    "retries": s.retries,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )

    def stuck(self) -> bool:
        """Whether a reader has made no progress for ``stuck_after_s``."""
        oldest = min((p.progress for p in self._parts), default=time.monotonic())
        return time.monotonic() - oldest > self.options.stuck_after_s

    async def lag(self) -> tuple[int, float]:
        """(entries not yet acknowledged, age in s of the oldest), over every partition;
        a fresh probe (the CloudWatch lag publisher calls this)."""
        total, age = 0, 0.0
        for part in self._parts:
            unacked, oldest = await self._sweep(part, trim=False)
            total += unacked
            age = max(age, oldest)
        return total, age

    # ------------------------------------------------------------------ reader loop

    async def _run_partition(self, part: _Partition, stop: asyncio.Event) -> None:
        await self._retry("redis", lambda: self._ensure_group(part), part)
        await self._read_own_pending(part, stop)
        while not stop.is_set():
            raw = await self._read(part, ">", block=True)
            part.progress = time.monotonic()
            if raw:
                await self._handle(part, raw, fresh=True)
            await self._maintain(part, stop)
        await self._safe_sweep(part)

    async def _ensure_group(self, part: _Partition) -> None:
        try:
            await self._redis.xgroup_create(part.key, self.options.group, id="0", mkstream=True)
            log.info("consumer group created", extra={"stream": part.key})
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _read_own_pending(self, part: _Partition, stop: asyncio.Event) -> None:
        """Entries this consumer name holds from a previous life (same CONSUMER_NAME)."""
        cursor = "0"
        while not stop.is_set():
            raw = await self._read(part, cursor, block=False)
            if not raw:
                return
            log.info("re-reading own pending", extra={"stream": part.key, "entries": len(raw)})
            await self._handle(part, raw, fresh=False)
            cursor = raw[-1][0].decode()

    async def _read(self, part: _Partition, cursor: str, *, block: bool) -> list[RawEntry]:
        opts = self.options
        started = time.perf_counter()

        async def read() -> Any:
            try:
                return await self._redis.xreadgroup(
                    opts.group,
                    opts.consumer,
                    {part.key: cursor},
                    count=self.sizer.size,
                    block=opts.block_ms if block else None,
                )
            except redis.exceptions.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                log.warning("consumer group missing; recreating", extra={"stream": part.key})
                await self._ensure_group(part)
                return None

        try:
            reply = await read()
        except TRANSIENT_ERRORS as e:
            # Nothing in hand: back off, then let the loop look at ``stop`` again.
            part.read_failures += 1
            self._note_failure("redis", part.read_failures, e)
            await asyncio.sleep(self._backoff(part.read_failures))
            return []
        if part.read_failures:
            self._note_recovery("redis", part.read_failures)
            part.read_failures = 0
        self._m_stage["read"].observe(time.perf_counter() - started)
        if not reply:
            return []
        entries: list[RawEntry] = reply[0][1]
        return entries

    async def _maintain(self, part: _Partition, stop: asyncio.Event) -> None:
        """Reclaim and sweep when due; a failure here is retried next time round."""
        now = time.monotonic()
        try:
            if now >= part.next_claim:
                part.next_claim = now + self.options.claim_interval_s
                await self._reclaim(part, stop)
            if part.dirty and now >= part.next_sweep:
                await self._sweep(part, trim=True)
        except TRANSIENT_ERRORS as e:
            log.warning("maintenance failed", extra={"stream": part.key, "error": repr(e)})

    async def _reclaim(self, part: _Partition, stop: asyncio.Event) -> None:
        """XAUTOCLAIM entries idle past the visibility timeout and process them."""
        opts = self.options
        start: bytes | str = "0-0"
        total = 0
        started = time.monotonic()
        while not stop.is_set():
            reply = await self._redis.xautoclaim(
                part.key,
                opts.group,
                opts.consumer,
                opts.claim_idle_ms,
                start,
                count=self.sizer.size,
            )
            start, claimed = reply[0], reply[1]
            if claimed:
                total += len(claimed)
                metrics.RECLAIMED.inc(len(claimed))
                self.stats.reclaimed += len(claimed)
                await self._handle(part, claimed, fresh=False)
            if start in (b"0-0", "0-0"):
                break
        forgotten = await self._forget(
            keys=[part.key], args=[opts.group, opts.consumer, opts.forget_idle_ms]
        )
        if forgotten:
            log.info("forgot idle consumers", extra={"stream": part.key, "consumers": forgotten})
        if total:
            log.info(
                "reclaimed entries",
                extra={
                    "stream": part.key,
                    "entries": total,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )

    async def _sweep(self, part: _Partition, *, trim: bool) -> tuple[int, float]:
        pending, undelivered, oldest, trimmed = await self._sweep_script(
            keys=[part.key], args=[self.options.group, "1" if trim else "0"]
        )
        unacked = int(pending) + int(undelivered)
        age = 0.0
        if oldest:
            oldest_ms = int(oldest.split(b"-", 1)[0])
            age = max(0.0, (now_ms() - oldest_ms) / 1000)
        part.unacked, part.oldest_age_s = unacked, age
        if trim:
            part.dirty = False
            part.next_sweep = time.monotonic() + self.options.trim_interval_s
            self._m_lag.set(sum(p.unacked for p in self._parts))
            if trimmed:
                log.debug("trimmed", extra={"stream": part.key, "entries": trimmed})
        return unacked, age

    async def _safe_sweep(self, part: _Partition) -> None:
        try:
            await self._sweep(part, trim=True)
        except TRANSIENT_ERRORS:
            log.warning("final sweep failed", extra={"stream": part.key})

    # ------------------------------------------------------------------ one batch

    async def _handle(self, part: _Partition, raw: list[RawEntry], *, fresh: bool) -> None:
        """Decode, store, publish and acknowledge one batch (or dead-letter its poison)."""
        part.lease_at = time.monotonic()
        metrics.BATCH_SIZE.observe(len(raw))
        try:
            deliveries = {} if fresh else await self._deliveries(part, raw)
            t0 = time.perf_counter()
            batch = self._split(raw, deliveries)
            t1 = time.perf_counter()
            self._m_stage["decode"].observe(t1 - t0)
            await self._store_and_publish(part, batch)
            t2 = time.perf_counter()
            await self._settle(part, batch)
            self._m_stage["ack"].observe(time.perf_counter() - t2)
        except asyncio.CancelledError:
            self.stats.cancelled += len(raw)
            raise
        self.stats.batches += 1
        part.dirty = True
        part.progress = time.monotonic()

    async def _deliveries(self, part: _Partition, raw: list[RawEntry]) -> dict[bytes, int]:
        """Delivery counts of redelivered entries (XPENDING over the batch's id range)."""
        first, last = raw[0][0], raw[-1][0]
        rows = await self._retry(
            "redis",
            lambda: self._redis.xpending_range(
                part.key,
                self.options.group,
                min=first,
                max=last,
                count=len(raw) * 2,
                consumername=self.options.consumer,
            ),
            part,
        )
        return {r["message_id"]: int(r["times_delivered"]) for r in rows}

    def _split(self, raw: list[RawEntry], deliveries: Mapping[bytes, int]) -> _Batch:
        batch = _Batch()
        limit = self.options.max_deliveries
        for sid, fields in raw:
            if fields is None:  # deleted while pending: nothing left to store
                batch.gone.append(sid)
                continue
            n = deliveries.get(sid, 1)
            if n > limit:
                batch.dead.append((sid, fields, f"max_deliveries: delivered {n} times", n))
                continue
            try:
                message = decode_queued(fields[b"m"])
                seq = int(fields[b"s"])
                ts = int(fields[b"t"])
            except (DecodeError, KeyError, ValueError) as e:
                batch.dead.append((sid, fields, f"malformed: {e}"[:500], n))
                continue
            batch.ids.append(sid)
            batch.messages.append((message, seq, ts))
        return batch

    async def _store_and_publish(self, part: _Partition, batch: _Batch) -> None:
        if not batch.messages:
            return
        t0 = time.perf_counter()
        documents = await self._retry("enrich", lambda: self._enrich(batch), part, batch.ids)
        t1 = time.perf_counter()
        self._m_stage["enrich"].observe(t1 - t0)
        outcome = await self._insert(part, batch, documents)
        t2 = time.perf_counter()
        self._m_stage["store"].observe(t2 - t1)
        self._m_persisted.inc(outcome.inserted)
        if outcome.duplicates:
            metrics.PERSIST_DUPLICATES.inc(outcome.duplicates)
            self.stats.duplicates += outcome.duplicates
        rejected = dict(outcome.failed)
        if rejected:
            self._reject(batch, rejected)
        self._publish(documents, rejected)
        self._m_stage["publish"].observe(time.perf_counter() - t2)

    async def _insert(
        self, part: _Partition, batch: _Batch, documents: list[NewMessage]
    ) -> InsertOutcome:
        """Insert ``documents`` in chunks of the batch size current when each chunk gets
        its insert slot (one chunk unless the size shrank since the read); each chunk is
        retried on its own."""
        total: InsertOutcome | None = None
        start = 0
        while True:
            insert = functools.partial(self._insert_next, documents, start)
            out, n = await self._retry("mongo", insert, part, batch.ids)
            if start == 0 and n == len(documents):
                return out
            if total is None:
                total = InsertOutcome()
            total.inserted += out.inserted
            total.duplicates += out.duplicates
            total.failed += [(start + i, reason) for i, reason in out.failed]
            total.seconds += out.seconds
            start += n
            if start >= len(documents):
                return total

    async def _insert_next(
        self, documents: list[NewMessage], start: int
    ) -> tuple[InsertOutcome, int]:
        """Take an insert slot, then insert the next chunk from ``start``."""
        slots = self._insert_slots
        if slots is None:
            chunk = documents[start : start + self.sizer.size]
            return await self._timed_insert(chunk), len(chunk)
        waited = time.perf_counter()
        async with slots:
            self._m_stage["insert_wait"].observe(time.perf_counter() - waited)
            chunk = documents[start : start + self.sizer.size]
            return await self._timed_insert(chunk), len(chunk)

    async def _timed_insert(self, documents: list[NewMessage]) -> InsertOutcome:
        """One store insert, after the pacing's delay (holding the slot, if any); its
        duration (not the slot wait, not the delay) feeds the batch sizer and the
        pacing."""
        pacing = self._pacing
        if pacing is not None:
            wait = min(pacing.delay(time.perf_counter()), MAX_PACING_DELAY_S)
            if wait > 0:
                metrics.BULK_YIELDED.inc(wait)
                await asyncio.sleep(wait)
        self.inflight_inserts += 1
        if self.inflight_inserts > self.inflight_peak:
            self.inflight_peak = self.inflight_inserts
        started = time.perf_counter()
        try:
            outcome = await self._store.insert(documents)
        finally:
            self.inflight_inserts -= 1
        ended = time.perf_counter()
        if pacing is not None:
            pacing.inserted(started, ended)
        if self.sizer.observe(ended - started, len(documents)):
            self._m_batch_target.set(self.sizer.size)
        return outcome

    async def _enrich(self, batch: _Batch) -> list[NewMessage]:
        names = await self._enricher.sender_names(m.sender_id for m, _, _ in batch.messages)
        keys = [k for m, _, _ in batch.messages for k in m.attachments]
        files: Mapping[str, StoredAttachment] = (
            await self._enricher.attachments(keys) if keys else {}
        )
        return [
            NewMessage(
                id=m.id,
                chat_id=m.chat_id,
                seq=seq,
                ts=ts,
                sender_id=m.sender_id,
                sender_name=names[m.sender_id],
                text=m.text,
                attachments=[files[k] for k in m.attachments] if m.attachments else (),
                priority=m.priority,
            )
            for m, seq, ts in batch.messages
        ]

    def _reject(self, batch: _Batch, rejected: Mapping[int, str]) -> None:
        """Move documents the store refused (not duplicates) to the dead-letter list."""
        keep_ids: list[bytes] = []
        for i, sid in enumerate(batch.ids):
            reason = rejected.get(i)
            if reason is None:
                keep_ids.append(sid)
                continue
            message, seq, ts = batch.messages[i]
            fields = {b"m": encode_queued(message), b"s": str(seq).encode(), b"t": str(ts).encode()}
            batch.dead.append((sid, fields, f"rejected by store: {reason}"[:500], 1))
        batch.ids = keep_ids

    def _publish(self, documents: Sequence[NewMessage], rejected: Mapping[int, str]) -> None:
        publish = self._sink.publish
        now = now_ms()
        latencies: list[float] = []
        for i, d in enumerate(documents):
            if rejected and i in rejected:
                continue
            frame = MessageFrame(
                id=d.id,
                chat_id=d.chat_id,
                seq=d.seq,
                ts=d.ts,
                sender_id=d.sender_id,
                sender_name=d.sender_name,
                text=d.text,
                attachments=[
                    Attachment(
                        key=a.key,
                        url=attachment_url(a.key),
                        content_type=a.content_type,
                        size=a.size,
                    )
                    for a in d.attachments
                ]
                if d.attachments
                else [],
                priority=d.priority,
            )
            publish(d.chat_id, encode_frame(frame))
            latencies.append((now - d.ts) / 1000)
        metrics.observe_many(self._m_latency, latencies)
        metrics.PUBLISHED.inc(len(latencies))

    async def _settle(self, part: _Partition, batch: _Batch) -> None:
        """Dead-letter the poison, then XACK everything stored (one call each)."""
        opts = self.options
        if batch.dead:
            moved = await self._retry("redis", lambda: self._move_dead(part, batch.dead), part)
            for _, _, reason, _ in batch.dead:
                metrics.DEAD_LETTERED.labels(reason.split(":", 1)[0]).inc()
            self.stats.dead_lettered += len(batch.dead)
            log.warning(
                "dead-lettered entries",
                extra={"stream": part.key, "entries": len(batch.dead), "moved": moved},
            )
        acks = batch.ids + batch.gone
        if acks:
            await self._retry("redis", lambda: self._redis.xack(part.key, opts.group, *acks), part)
            self.stats.processed += len(batch.ids)

    async def _move_dead(
        self, part: _Partition, dead: list[tuple[bytes, dict[bytes, bytes], str, int]]
    ) -> int:
        args: list[bytes | str | int] = [self.options.group, self.options.consumer]
        for sid, fields, reason, deliveries in dead:
            args += [sid, reason, deliveries, len(fields)]
            for k, v in fields.items():
                args += [k, v]
        return int(await self._dead_letter(keys=[part.key, part.dead], args=args))

    # ------------------------------------------------------------------ retries

    async def _retry(
        self,
        dependency: str,
        call: Callable[[], Awaitable[T]],
        part: _Partition | None = None,
        lease: Sequence[bytes] = (),
    ) -> T:
        """Run ``call`` until it does not fail transiently; back off, keep the lease."""
        attempt = 0
        failed = dependency
        while True:
            try:
                result = await call()
            except TRANSIENT_ERRORS as e:
                attempt += 1
                failed = dependency_of(e, dependency)
                self._note_failure(failed, attempt, e)
                if part is None:  # start-up (indexes): every reader is waiting on it
                    for p in self._parts:
                        p.progress = time.monotonic()
                else:
                    part.progress = time.monotonic()
                    await self._keep_lease(part, lease)
                await asyncio.sleep(self._backoff(attempt))
                continue
            if attempt:
                self._note_recovery(failed, attempt)
            return result

    def _backoff(self, attempt: int) -> float:
        """Exponential from retry_initial_s, capped at retry_max_s."""
        opts = self.options
        return float(min(opts.retry_initial_s * (2.0 ** min(attempt - 1, 30)), opts.retry_max_s))

    def _note_failure(self, dependency: str, attempt: int, error: BaseException) -> None:
        self.failing.setdefault(dependency, time.monotonic())
        metrics.STORE_RETRIES.labels(dependency).inc()
        self.stats.retries += 1
        if attempt == 1 or attempt % 20 == 0:
            log.warning(
                "dependency failing; batch kept pending",
                extra={"dependency": dependency, "attempt": attempt, "error": repr(error)},
            )

    def _note_recovery(self, dependency: str, attempts: int) -> None:
        since = self.failing.pop(dependency, None)
        log.info(
            "dependency recovered",
            extra={
                "dependency": dependency,
                "attempts": attempts,
                "outage_s": round(time.monotonic() - since, 3) if since else None,
            },
        )

    async def _keep_lease(self, part: _Partition, ids: Sequence[bytes]) -> None:
        """Reset the idle time of a batch we are still working on, so that no other
        consumer reclaims it during an outage. JUSTID: the delivery count is unchanged."""
        now = time.monotonic()
        if not ids or now - part.lease_at < self.options.claim_idle_ms / 3000:
            return
        try:
            await self._redis.xclaim(
                part.key, self.options.group, self.options.consumer, 0, list(ids), justid=True
            )
            part.lease_at = now
        except TRANSIENT_ERRORS:
            pass  # Redis is down too: nobody can reclaim in the meantime either


def dependency_of(error: BaseException, default: str) -> str:
    """The dependency a transient error came from (the ``store`` label of retries)."""
    if isinstance(error, sqlalchemy.exc.SQLAlchemyError):
        return "sql"
    if isinstance(error, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError):
        return "s3"
    if isinstance(error, pymongo.errors.PyMongoError):
        return "mongo"
    if isinstance(error, redis.exceptions.RedisError):
        return "redis"
    return default
