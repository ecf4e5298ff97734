"""Enqueue: the one atomic step that accepts a message (DESIGN.md invariants 1, 2, 5).

A Lua script per partition takes a *batch* of messages and, for each one, atomically:

1. returns the original ack if ``(sender, client_id)`` was seen within the TTL
   (idempotent resend; nothing new is stored);
2. refuses it (``unavailable``) if its stream is over ``STREAM_MAX_LEN`` entries: the
   backlog is bounded by backpressure, never by trimming unacknowledged entries;
3. assigns ``seq = HINCRBY chat:{p}:seq chat_id 1`` (contiguous, no gaps);
4. assigns ``ts = max(Redis TIME in ms, last ts of the chat)`` (one clock, never
   decreasing in seq order, even if the Redis host's clock steps back or fails over);
5. XADDs ``m`` (msgpack body), ``s`` (seq), ``t`` (ts) to ``chat:{p}:live|bulk``.

The script touches only keys of partition ``p`` (hash tag ``{p}``), so it runs on one
shard of Redis Cluster. A batch from one gateway tick costs one round trip per partition
it touches; the partitions are sent concurrently.

Why a script rather than MULTI: seq, ts and the idempotency check depend on values read
in the same atomic step; a script does it in one round trip with no WATCH retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from chat import metrics
from chat.errors import Unavailable
from chat.keys import KeySpace, PartitionKeys, partition_of
from chat.serialization import Priority, QueuedMessage, encode_queued

# KEYS: seq hash, ts hash, live stream, bulk stream (all of partition p).
# ARGV: ttl, maxlen, idempotency key prefix, batch. The batch is ONE msgpack array of
# [chat_id (str), prio ("l"|"b"), "<sender>:<client_id>" or "", id, body (JSON str)]
# records: one argument per call instead of five per message, because redis-py packs
# every argument in Python (that was ~45% of the client's CPU). Bodies are JSON so they
# travel as msgpack str (Redis's cmsgpack cannot read bin). The idempotency keys are
# built here from the prefix, which carries the partition's hash tag, so they are in the
# slot of KEYS[1] by construction (tests/integration/test_enqueue.py checks it) although
# not declared: declaring them would cost one argument per message again.
# Replies: "<seq> <ts>" (new: the caller knows id and prio), "=<id> <seq> <ts> <prio>"
# (resend: the first send's ack), "!" (backlog full).
ENQUEUE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = ARGV[1]
local maxlen = tonumber(ARGV[2])
local cidp = ARGV[3]
local recs = cmsgpack.unpack(ARGV[4])
local out = {}
local lens = {}
for i = 1, #recs do
  local r = recs[i]
  local chat, prio, idem, id, body = r[1], r[2], r[3], r[4], r[5]
  local idkey = nil
  local prev = nil
  if idem ~= '' then
    idkey = cidp .. idem
    prev = redis.call('GET', idkey)
  end
  if prev then
    out[i] = '=' .. prev
  else
    local stream = KEYS[4]
    if prio == 'l' then stream = KEYS[3] end
    local len = lens[stream]
    if len == nil then len = redis.call('XLEN', stream) end
    if len >= maxlen then
      out[i] = '!'
    else
      local seq = redis.call('HINCRBY', KEYS[1], chat, 1)
      local last = tonumber(redis.call('HGET', KEYS[2], chat) or '0')
      local ts = now
      if last > ts then ts = last else redis.call('HSET', KEYS[2], chat, ts) end
      local sts = string.format('%.0f', ts)
      redis.call('XADD', stream, '*', 'm', body, 's', seq, 't', sts)
      lens[stream] = len + 1
      if idkey then
        redis.call('SET', idkey, id .. ' ' .. seq .. ' ' .. sts .. ' ' .. prio, 'EX', ttl)
      end
      out[i] = seq .. ' ' .. sts
    end
  end
end
return out
"""

log = logging.getLogger(__name__)

_PRIO_CODE: dict[str, str] = {"live": "l", "bulk": "b"}
_batch_encoder = msgspec.msgpack.Encoder()
_PRIO_NAME: dict[bytes, Priority] = {b"l": "live", b"b": "bulk"}


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """What the sender's ``ack`` carries. ``duplicate``: an earlier send's ack.

    A msgspec struct, not a frozen dataclass: one is built per accepted message and a
    frozen dataclass's ``__init__`` costs ~10x more."""

    id: str
    chat_id: int
    seq: int
    ts: int
    priority: Priority
    duplicate: bool = False


class ScriptRunner(Protocol):
    """``redis.commands.core.AsyncScript``: callable with keys and args."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Sequence[Any] | None = None,
        client: Any = None,
    ) -> Any: ...


class Enqueuer:
    """Runs the enqueue script, one call per partition touched by the batch.

    Against one Redis server (``redis.asyncio.Redis``) the calls of a batch that spans
    several partitions go out in one pipeline: one write and one read for the whole
    batch instead of one round trip (and one pooled connection) per partition, which is
    what a gateway tick costs when its frames come from many chats. A cluster client
    (``RedisCluster``) sends each call to its partition's shard concurrently instead:
    redis-py refuses EVALSHA in cluster pipelines.
    """

    def __init__(self, redis: Any, keyspace: KeySpace, *, idempotency_ttl_s: int, max_len: int):
        self._redis = redis
        script = redis.register_script(ENQUEUE_LUA)
        self._script: ScriptRunner = script
        self._sha: str = script.sha
        self._pipelined = isinstance(redis, aioredis.Redis)
        self._keyspace = keyspace
        self._parts = keyspace.all()  # key names built once, not per message
        self._ttl = str(idempotency_ttl_s).encode()
        self._max_len = str(max_len).encode()

    async def enqueue(self, messages: Sequence[QueuedMessage]) -> list[Accepted | Unavailable]:
        """Accept a batch; each result is an :class:`Accepted` or, if that message's stream
        is over its backlog cap, an :class:`Unavailable` (that message was not stored).

        A Redis error (connection lost, failover) propagates: none of the failed
        partition's messages can be assumed accepted, and a resend with the same
        client_id is safe. In a pipelined batch, a partition whose call fails on its own
        (an error reply) answers :class:`Unavailable` for its messages only.
        """
        by_partition: dict[int, list[int]] = defaultdict(list)
        n = self._keyspace.partitions
        for i, m in enumerate(messages):
            by_partition[partition_of(m.chat_id, n)].append(i)
        results: list[Accepted | Unavailable | None] = [None] * len(messages)

        async def run(p: int, idx: list[int]) -> None:
            part = self._parts[p]
            batch = [messages[i] for i in idx]
            for i, r in zip(idx, await self._run_partition(part, batch), strict=True):
                results[i] = r

        if len(by_partition) == 1:
            ((p, idx),) = by_partition.items()
            await run(p, idx)
        elif self._pipelined:
            await self._run_pipelined(messages, by_partition, results)
        else:
            async with asyncio.TaskGroup() as tg:
                for p, idx in by_partition.items():
                    tg.create_task(run(p, idx))
        return [r for r in results if r is not None]

    def _args(self, part: PartitionKeys, batch: Sequence[QueuedMessage]) -> tuple[Any, ...]:
        batch_arg = _batch_encoder.encode(
            [
                (
                    str(m.chat_id),
                    _PRIO_CODE[m.priority],
                    "" if m.client_id is None else f"{m.sender_id}:{m.client_id}",
                    m.id,
                    encode_queued(m).decode(),
                )
                for m in batch
            ]
        )
        return (self._ttl, self._max_len, part.cid_prefix, batch_arg)

    async def _run_partition(
        self, part: PartitionKeys, batch: Sequence[QueuedMessage]
    ) -> list[Accepted | Unavailable]:
        keys = [part.seq, part.ts, part.live, part.bulk]
        replies = await self._script(keys=keys, args=self._args(part, batch))
        return [_parse_reply(m, r) for m, r in zip(batch, replies, strict=True)]

    async def _run_pipelined(
        self,
        messages: Sequence[QueuedMessage],
        by_partition: dict[int, list[int]],
        results: list[Accepted | Unavailable | None],
    ) -> None:
        parts = self._parts
        calls = [(parts[p], [messages[i] for i in idx], idx) for p, idx in by_partition.items()]
        async with self._redis.pipeline(transaction=False) as pipe:
            for part, batch, _ in calls:
                pipe.evalsha(
                    self._sha, 4, part.seq, part.ts, part.live, part.bulk, *self._args(part, batch)
                )
            replies = await pipe.execute(raise_on_error=False)
        for (part, batch, idx), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # Not cached on this server yet (first use, restart, failover): nothing
                # ran; the script object loads it and runs the call again.
                outcome: list[Accepted | Unavailable] = await self._run_partition(part, batch)
            elif isinstance(reply, Exception):
                log.warning("enqueue failed", extra={"messages": len(batch), "error": repr(reply)})
                refused = f"queue unavailable: {type(reply).__name__}"
                outcome = [Unavailable(refused, client_id=m.client_id) for m in batch]
            else:
                outcome = [_parse_reply(m, r) for m, r in zip(batch, reply, strict=True)]
            for i, r in zip(idx, outcome, strict=True):
                results[i] = r


def _parse_reply(message: QueuedMessage, reply: bytes) -> Accepted | Unavailable:
    if reply[:1] == b"=":
        mid, seq, ts, prio = reply[1:].split(b" ")
        return Accepted(
            id=mid.decode(),
            chat_id=message.chat_id,
            seq=int(seq),
            ts=int(ts),
            priority=_PRIO_NAME[prio],
            duplicate=True,
        )
    if reply == b"!":
        return Unavailable("queue backlog is full, retry later", client_id=message.client_id)
    seq, ts = reply.split(b" ")
    return Accepted(message.id, message.chat_id, int(seq), int(ts), message.priority)


#: Called once with a message's outcome, as soon as its batch's reply arrives.
Done = Callable[[Accepted | Unavailable], None]
_Waiter = tuple[QueuedMessage, Done]

_ENQUEUED = {p: metrics.ENQUEUED.labels(priority=p) for p in ("live", "bulk")}
_REJECTED = metrics.ENQUEUE_REJECTED.labels(reason="unavailable")


def _resolver(fut: asyncio.Future[Accepted]) -> Done:
    def done(result: Accepted | Unavailable) -> None:
        if fut.done():  # the caller gave up (cancelled)
            return
        if isinstance(result, Accepted):
            fut.set_result(result)
        else:
            fut.set_exception(result)

    return done


def _count(results: Sequence[Accepted | Unavailable]) -> None:
    """The enqueue counters, once per batch rather than once per message."""
    live = bulk = duplicates = refused = 0
    for r in results:
        if type(r) is Accepted:
            if r.duplicate:
                duplicates += 1
            elif r.priority == "live":
                live += 1
            else:
                bulk += 1
        else:
            refused += 1
    for counter, n in (
        (_ENQUEUED["live"], live),
        (_ENQUEUED["bulk"], bulk),
        (metrics.DUPLICATE_SENDS, duplicates),
        (_REJECTED, refused),
    ):
        if n:
            counter.inc(n)


class _Lane:
    """One ordered queue of enqueues: batches run one after the other, in order.

    Concurrent batches could reach Redis out of order over different pooled connections,
    and a client's pipelined sends to one chat would get their seqs shuffled. While a
    batch is in flight the next one accumulates (up to ``max_batch``) and goes out when it
    returns, so the batch size grows with the load instead of the number of round trips.
    """

    def __init__(
        self,
        enqueuer: Enqueuer,
        max_batch: int,
        finished: Callable[[list[_Waiter]], None],
    ) -> None:
        self._enqueuer = enqueuer
        self._max_batch = max_batch
        self._finished = finished
        self.pending: list[_Waiter] = []
        self._scheduled = False
        self.inflight: set[asyncio.Task[None]] = set()
        self._tail: asyncio.Task[None] | None = None

    def add(self, message: QueuedMessage, done: Done) -> None:
        self.pending.append((message, done))
        if len(self.pending) >= self._max_batch:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self.pending:
            return
        busy = self._tail is not None and not self._tail.done()
        if busy and len(self.pending) < self._max_batch:
            return  # the batch in flight flushes these when it completes (see _run)
        batch, self.pending = self.pending, []
        task = asyncio.ensure_future(self._run(batch, self._tail))
        self._tail = task
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _run(self, batch: list[_Waiter], after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])  # keeps submission order; never raises
        try:
            await self._run_batch(batch)
        finally:
            self._finished(batch)
            if self.pending and not self._scheduled:
                # What arrived while this batch was in flight is the next batch.
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)

    async def _run_batch(self, batch: list[_Waiter]) -> None:
        results: list[Accepted | Unavailable]
        try:
            results = await self._enqueuer.enqueue([m for m, _ in batch])
        except Exception as e:
            log.warning("enqueue failed", extra={"messages": len(batch), "error": repr(e)})
            reason = f"queue unavailable: {type(e).__name__}"
            results = [Unavailable(reason, client_id=m.client_id) for m, _ in batch]
        _count(results)
        for (_, done), r in zip(batch, results, strict=True):
            try:
                done(r)
            except Exception:  # one caller's bug must not cost the others their acks
                log.exception("enqueue callback failed")


class BatchingEnqueuer:
    """Coalesces the enqueues requested in one event-loop tick into one batch per lane.

    Each caller gets its own outcome (a future, or a callback for the gateway's hot
    path); the first caller of a tick schedules the flush with ``call_soon``, so a burst
    of frames read from many sockets in the same tick costs one script call per
    partition instead of one per message. ``max_batch`` caps the script's run time
    (Redis is single-threaded: a huge script delays every client).

    **Two lanes.** Live messages have their own lane, so an interactive send never waits
    behind a bulk batch in flight and the bulk messages piling up behind it (invariant 3
    at the gateway). Each lane keeps submission order. Across lanes, one sender's order
    is kept too: while a sender has messages waiting or in flight in one lane, their
    next messages join that lane whatever their class (a person demoted to bulk by the
    live budget mid-burst, or back to live while their bulk messages are in flight); the
    class decides the stream, the lane only when the enqueue runs.

    Counts ``chat_enqueued_total``, ``chat_duplicate_sends_total`` and
    ``chat_enqueue_rejected_total`` once per batch.
    """

    def __init__(self, enqueuer: Enqueuer, *, max_batch: int = 256) -> None:
        #: sender -> [their lane, messages of theirs waiting or in flight in it]
        self._lane_of: dict[int, list[Any]] = {}
        self._live = _Lane(enqueuer, max_batch, self._finished)
        self._bulk = _Lane(enqueuer, max_batch, self._finished)

    async def enqueue(self, message: QueuedMessage) -> Accepted:
        """Accept one message; raises :class:`Unavailable` (backlog full, Redis down)."""
        return await self.submit(message)

    def submit(self, message: QueuedMessage) -> asyncio.Future[Accepted]:
        """:meth:`enqueue` without a coroutine: the future resolves to the
        :class:`Accepted` or fails with :class:`Unavailable`."""
        fut: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self.submit_to(message, _resolver(fut))
        return fut

    def submit_to(self, message: QueuedMessage, done: Done) -> None:
        """Enqueue ``message`` and call ``done`` with its :class:`Accepted` or
        :class:`Unavailable` when its batch returns: no future, no task and no extra
        event-loop callback per message (the gateway's hot path)."""
        sender = message.sender_id
        entry = self._lane_of.get(sender)
        if entry is None:
            lane = self._live if message.priority == "live" else self._bulk
            self._lane_of[sender] = [lane, 1]
        else:
            lane = entry[0]
            entry[1] += 1
        lane.add(message, done)

    def _finished(self, batch: list[_Waiter]) -> None:
        lane_of = self._lane_of
        for message, _ in batch:
            entry = lane_of.get(message.sender_id)
            if entry is not None:
                entry[1] -= 1
                if not entry[1]:
                    del lane_of[message.sender_id]

    async def drain(self) -> None:
        """Wait until every submitted message has its result (graceful shutdown)."""
        lanes = (self._live, self._bulk)
        while any(lane.pending or lane.inflight for lane in lanes):
            for lane in lanes:
                lane.flush()
            inflight = [t for lane in lanes for t in lane.inflight]
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            else:
                await asyncio.sleep(0)
