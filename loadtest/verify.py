"""``python -m loadtest verify``: prove from MongoDB that every accepted message was stored
exactly once, in order, with the timestamp its ack announced.

Inputs: the run's records (one row per send: client_id, chat, send/ack times, the ack's
id/seq/ts/priority) and the ``messages`` collection. The run's chats are fresh, so every
document in them belongs to the run. Checks, per message and per chat:

* **missing**: an acked (chat_id, seq) with no document, or a different message there;
* **duplicated**: a client_id stored twice (the idempotency key failed);
* **unexpected**: a document in a run chat that no record explains;
* **seq_gap** / **seq_repeat**: each chat's seqs are 1..N, contiguous;
* **ts_decrease**: ts never decreases in seq order;
* **ts_mismatch**: the stored ts is the ack's ts;
* **ts_window**: the ack's ts lies in [send - skew, ack + skew] (the platform accepted
  the message between the moment it was sent and the moment the ack came back);
* **priority_mismatch** / **bulk_went_live**: stored priority is the ack's, and load
  accounts never reach the live queue (invariant 3);
* **queue_tail_missing** (with Redis): the chat's seq counter in Redis equals the
  highest stored seq, so even accepted messages whose ack never arrived were stored.

How it scales (the AWS run has tens of millions of rows): one pass over the records
splits them into buckets by ``chat_id`` (spilled to disk when a bucket would exceed
``bucket_rows``); each bucket's chats are then read from MongoDB in chunks of
``chat_group`` chats sorted by ``(chat_id, seq)``, which the unique ``chat_seq`` index
serves without an in-memory sort, and joined with that bucket's rows only. Memory is
bounded by one bucket, whatever the run's size.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from chat.timestamps import datetime_to_ms
from loadtest import histograms
from loadtest.records import LIVE, Record

log = logging.getLogger(__name__)

VERIFY_FILE = "verify.json"
#: Every kind below fails the verdict; informational counts live in ``counts``.
VIOLATIONS = (
    "missing",
    "duplicated",
    "unexpected",
    "seq_gap",
    "seq_repeat",
    "ts_decrease",
    "ts_mismatch",
    "ts_window",
    "priority_mismatch",
    "bulk_went_live",
    "queue_tail_missing",
    "nothing_acked",
)
PROJECTION = {"_id": 1, "chat_id": 1, "seq": 1, "ts": 1, "text": 1, "priority": 1}
PROJECTION_PERSISTED = {**PROJECTION, "persisted_at": 1}

#: chat_id -> last seq the queue assigned (Redis counters); None when unknown.
SeqCounterReader = Callable[[list[int]], Awaitable[dict[int, int]]]


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    clock_skew_ms: int = 5
    settle_timeout_s: float = 60.0
    settle_quiet_s: float = 10.0
    bucket_rows: int = 2_000_000
    chat_group: int = 500
    max_examples: int = 10


@dataclass
class RecordSource:
    """The run's chats and a way to iterate its records (more than once)."""

    chat_ids: list[int]
    records: Callable[[], Iterable[Record]]
    label: str = ""


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    persisted: int = 0
    persisted_unacked: int = 0
    live_demoted: int = 0
    resends: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


class _ClassLatency:
    """ack, end-to-end and persist latency (µs) of one class (live or bulk)."""

    KINDS = ("ack", "e2e", "persist")

    def __init__(self) -> None:
        self.batches = {k: histograms.LatencyBatch() for k in self.KINDS}
        self.hists = {k: histograms.new_histogram() for k in self.KINDS}

    def add(self, kind: str, micros: int) -> None:
        batch = self.batches[kind]
        batch.add(micros)
        if len(batch) >= 100_000:
            batch.drain_into(self.hists[kind])

    def to_json(self) -> dict[str, dict[str, float]]:
        for k in self.KINDS:
            self.batches[k].drain_into(self.hists[k])
        return {k: histograms.summary(self.hists[k]) for k in self.KINDS}


def client_id_of(text: str) -> str:
    """The generator (and the JMeter plans) start every text with the client_id."""
    return text.split(" ", 1)[0]


class _Spill:
    """Rows of one bucket, in memory or spilled to a file of length-prefixed chunks."""

    _encoder = msgspec.msgpack.Encoder()

    def __init__(self, directory: Path | None, index: int) -> None:
        self._path = directory / f"bucket-{index}.bin" if directory else None
        self._rows: list[Record] = []

    def add(self, record: Record) -> None:
        self._rows.append(record)
        if self._path is not None and len(self._rows) >= 20_000:
            self.flush()

    def flush(self) -> None:
        if self._path is None or not self._rows:
            return
        data = self._encoder.encode([_row(r) for r in self._rows])
        with self._path.open("ab") as f:
            f.write(len(data).to_bytes(8, "little"))
            f.write(data)
        self._rows = []

    def read(self) -> Iterator[Record]:
        if self._path is not None and self._path.exists():
            with self._path.open("rb") as f:
                while header := f.read(8):
                    chunk = msgspec.msgpack.decode(f.read(int.from_bytes(header, "little")))
                    yield from (Record(*row) for row in chunk)
        yield from self._rows


def _row(r: Record) -> tuple[Any, ...]:
    return (
        r.client_id, r.chat_id, r.klass, r.send_ns, r.ack_ns, r.id,
        r.seq, r.ts, r.priority, r.deliver_ns, r.error, r.resends,
    )  # fmt: skip


@dataclass
class _ChatState:
    """The join state of one chat while its documents stream by."""

    acked: dict[int, Record] = field(default_factory=dict)
    last_seq: int = 0
    last_ts: int = -1
    seen_clients: set[str] = field(default_factory=set)


class Verifier:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        options: VerifyOptions | None = None,
        *,
        seq_counters: SeqCounterReader | None = None,
    ) -> None:
        self._coll = collection
        self.options = options or VerifyOptions()
        self._seq_counters = seq_counters
        self.tally = Tally()
        self.latency = {"live": _ClassLatency(), "bulk": _ClassLatency()}
        self.settle: dict[str, float] = {}

    # ------------------------------------------------------------------ violations

    def _violate(self, kind: str, detail: str, n: int = 1) -> None:
        self.tally.violations[kind] += n
        examples = self.tally.examples[kind]
        if len(examples) < self.options.max_examples:
            examples.append(detail)

    # ------------------------------------------------------------------ pass 1: records

    def _count(self, r: Record) -> None:
        t = self.tally
        t.sent += 1
        t.resends += r.resends
        if not r.acked:
            t.errors[r.error or "no_ack"] += 1
            return
        t.acked += 1
        lat = self.latency["live" if r.klass == LIVE else "bulk"]
        lat.add("ack", (r.ack_ns - r.send_ns) // 1000)
        if r.deliver_ns:
            lat.add("e2e", (r.deliver_ns - r.send_ns) // 1000)
        if r.klass == LIVE and r.priority == "bulk":
            t.live_demoted += 1
        if r.klass != LIVE and r.priority == "live":
            self._violate("bulk_went_live", f"{r.client_id} id={r.id} acked as live")
        skew_ns = self.options.clock_skew_ms * 1_000_000
        if not (r.send_ns - skew_ns) // 1_000_000 <= r.ts <= (r.ack_ns + skew_ns) // 1_000_000:
            self._violate(
                "ts_window",
                f"{r.id} chat={r.chat_id} seq={r.seq} ts={r.ts} "
                f"outside [{r.send_ms}, {r.ack_ms}] ± {self.options.clock_skew_ms} ms",
            )

    def _partition(self, source: RecordSource, spill_dir: Path | None) -> list[_Spill]:
        rows = 0
        buckets_n = 1
        if spill_dir is not None:
            rows = sum(1 for _ in source.records())
            buckets_n = max(1, -(-rows // self.options.bucket_rows))
        buckets = [_Spill(spill_dir if buckets_n > 1 else None, i) for i in range(buckets_n)]
        for r in source.records():
            self._count(r)
            buckets[r.chat_id % buckets_n].add(r)
        for b in buckets:
            b.flush()
        return buckets

    # ------------------------------------------------------------------ settle

    async def _persisted_count(self, chat_ids: list[int]) -> int:
        total = 0
        group = self.options.chat_group
        for i in range(0, len(chat_ids), group):
            total += await self._coll.count_documents({"chat_id": {"$in": chat_ids[i : i + group]}})
        return total

    async def wait_settled(self, chat_ids: list[int], expected: int) -> int:
        """Wait until at least ``expected`` documents are stored, or nothing changed for
        ``settle_quiet_s``, or ``settle_timeout_s`` passed. Returns the last count."""
        started = time.monotonic()
        last_change = started
        count = await self._persisted_count(chat_ids)
        while count < expected:
            now = time.monotonic()
            if now - started > self.options.settle_timeout_s:
                break
            if now - last_change > self.options.settle_quiet_s:
                break
            await asyncio.sleep(0.5)
            new = await self._persisted_count(chat_ids)
            if new != count:
                count, last_change = new, time.monotonic()
        self.settle = {
            "expected": expected,
            "stored": count,
            "waited_s": round(time.monotonic() - started, 2),
        }
        return count

    # ------------------------------------------------------------------ pass 2: join

    def _check_doc(
        self, doc: dict[str, Any], state: _ChatState, unacked: dict[str, Record]
    ) -> None:
        chat_id, seq = doc["chat_id"], doc["seq"]
        ts = datetime_to_ms(doc["ts"])
        where = f"chat={chat_id} seq={seq} id={doc['_id']}"
        if seq == state.last_seq:
            self._violate("seq_repeat", where)
        elif seq != state.last_seq + 1:
            self._violate("seq_gap", f"{where} after seq={state.last_seq}")
        if ts < state.last_ts:
            self._violate("ts_decrease", f"{where} ts={ts} < previous {state.last_ts}")
        state.last_seq = max(state.last_seq, seq)
        state.last_ts = max(state.last_ts, ts)
        self.tally.persisted += 1
        self._record_persist_latency(doc, ts)
        cid = client_id_of(doc.get("text", ""))
        if cid in state.seen_clients:
            self._violate("duplicated", f"{where} client_id={cid} stored again")
            return
        state.seen_clients.add(cid)
        rec = state.acked.pop(seq, None)
        if rec is not None and rec.id == doc["_id"]:
            self._check_match(doc, ts, rec, where)
        elif rec is not None:
            # The acked message's seq holds another message: the acked one is gone.
            self._violate("missing", f"{rec.id} acked at chat={chat_id} seq={seq}; found {where}")
        elif unacked.pop(cid, None) is not None:
            self.tally.persisted_unacked += 1
        else:
            self._violate("unexpected", f"{where} client_id={cid} has no record")

    def _check_match(self, doc: dict[str, Any], ts: int, rec: Record, where: str) -> None:
        if ts != rec.ts:
            self._violate("ts_mismatch", f"{where} stored ts={ts}, ack said {rec.ts}")
        if doc.get("priority") != rec.priority:
            self._violate(
                "priority_mismatch", f"{where} stored {doc.get('priority')}, ack {rec.priority}"
            )

    def _record_persist_latency(self, doc: dict[str, Any], ts: int) -> None:
        persisted_at = doc.get("persisted_at")
        if isinstance(persisted_at, datetime):
            lag_ms = datetime_to_ms(persisted_at) - ts
            lat = self.latency["live" if doc.get("priority") == "live" else "bulk"]
            lat.add("persist", lag_ms * 1000)

    async def _join_bucket(self, bucket: _Spill, chat_ids: list[int]) -> None:
        states: dict[int, _ChatState] = {c: _ChatState() for c in chat_ids}
        unacked: dict[str, Record] = {}
        for r in bucket.read():
            if r.acked:
                states.setdefault(r.chat_id, _ChatState()).acked[r.seq] = r
            else:
                unacked[r.client_id] = r
        ordered = sorted(states)
        group = self.options.chat_group
        for i in range(0, len(ordered), group):
            chunk = ordered[i : i + group]
            cursor = self._coll.find(
                {"chat_id": {"$in": chunk}},
                PROJECTION_PERSISTED,
                sort=[("chat_id", ASCENDING), ("seq", ASCENDING)],
                batch_size=10_000,
            )
            async for doc in cursor:
                state = states.get(doc["chat_id"])
                if state is not None:
                    self._check_doc(doc, state, unacked)
            await self._check_tails({c: states[c] for c in chunk})
        for chat_id in ordered:
            for rec in states[chat_id].acked.values():
                self._violate("missing", f"{rec.id} acked at chat={chat_id} seq={rec.seq}")

    async def _check_tails(self, states: dict[int, _ChatState]) -> None:
        if self._seq_counters is None:
            return
        counters = await self._seq_counters(list(states))
        for chat_id, state in states.items():
            assigned = counters.get(chat_id)
            if assigned is not None and assigned > state.last_seq:
                self._violate(
                    "queue_tail_missing",
                    f"chat={chat_id} queue assigned seq {assigned}, stored up to {state.last_seq}",
                    assigned - state.last_seq,
                )

    # ------------------------------------------------------------------ entry point

    async def verify(
        self, source: RecordSource, *, spill_dir: Path | None = None
    ) -> dict[str, Any]:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=spill_dir) as tmp:
            buckets = self._partition(source, Path(tmp) if spill_dir is not None else None)
            if not self.tally.acked:  # a run that proves nothing must not pass
                self._violate("nothing_acked", f"{self.tally.sent} sent, none acknowledged")
            await self.wait_settled(source.chat_ids, self.tally.acked)
            chats_by_bucket: dict[int, list[int]] = defaultdict(list)
            for c in source.chat_ids:
                chats_by_bucket[c % len(buckets)].append(c)
            for i, bucket in enumerate(buckets):
                await self._join_bucket(bucket, chats_by_bucket.get(i, []))
        result = self.result(source, time.monotonic() - started)
        log.info(
            "verify done verdict=%s sent=%d acked=%d persisted=%d",
            result["verdict"],
            self.tally.sent,
            self.tally.acked,
            self.tally.persisted,
        )
        return result

    def result(self, source: RecordSource, seconds: float) -> dict[str, Any]:
        t = self.tally
        violations = {k: t.violations.get(k, 0) for k in VIOLATIONS}
        failed = sum(violations.values()) > 0
        return {
            "verdict": "fail" if failed else "pass",
            "source": source.label,
            "chats": len(source.chat_ids),
            "counts": {
                "sent": t.sent,
                "acked": t.acked,
                "persisted": t.persisted,
                "persisted_unacked": t.persisted_unacked,
                "missing": violations["missing"] + violations["queue_tail_missing"],
                "duplicated": violations["duplicated"],
                "live_demoted": t.live_demoted,
                "resends": t.resends,
                "errors": dict(t.errors),
            },
            "violations": violations,
            "examples": {k: v for k, v in t.examples.items() if v},
            "latency": {k: v.to_json() for k, v in self.latency.items()},
            "settle": self.settle,
            "clock_skew_ms": self.options.clock_skew_ms,
            "seconds": round(seconds, 2),
        }


def failed_checks(result: dict[str, Any]) -> list[str]:
    return [k for k, v in result["violations"].items() if v]
