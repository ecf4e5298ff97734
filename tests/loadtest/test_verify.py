"""verify against a real Mongo-wire server: documents written with the storage layer,
records written with the generator's writer; every check passes on a clean database and
fails on the corruption it exists for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chat.storage.mongo import MessageStore, NewMessage
from loadtest.records import BULK, LIVE, Record, RecordWriter, iter_records
from loadtest.verify import RecordSource, Verifier, VerifyOptions

T0_MS = 1_800_000_000_000
FAST = VerifyOptions(settle_timeout_s=2.0, settle_quiet_s=1.0)


@dataclass
class Scenario:
    """Chats 11 (5 messages) and 12 (3 messages, the last one a live probe's)."""

    run_dir: Path
    rows: list[Record] = field(default_factory=list)
    docs: list[NewMessage] = field(default_factory=list)

    def add(self, chat_id: int, seq: int, *, klass: int = BULK, ack: bool = True) -> None:
        cid = f"r.0.0.{chat_id}-{seq}"
        ts = T0_MS + 10 * (chat_id * 100 + seq)
        mid = f"id-{chat_id}-{seq}"
        prio = "live" if klass == LIVE else "bulk"
        send_ns, ack_ns = (ts - 2) * 1_000_000, (ts + 3) * 1_000_000
        self.rows.append(
            Record(
                cid,
                chat_id,
                klass,
                send_ns,
                ack_ns if ack else 0,
                mid if ack else "",
                seq if ack else 0,
                ts if ack else 0,
                prio if ack else "",
                ack_ns + 1000,
                "" if ack else "timeout",
                0,
            )
        )
        self.docs.append(
            NewMessage(mid, chat_id, seq, ts, 7, "lt", f"{cid} hello", [], prio)  # type: ignore[arg-type]
        )

    def source(self) -> RecordSource:
        writer = RecordWriter(self.run_dir, "000-00", chunk_rows=3)
        for r in self.rows:
            writer.add(
                r.client_id,
                r.chat_id,
                r.klass,
                r.send_ns,
                r.ack_ns,
                r.id,
                r.seq,
                r.ts,
                r.priority,
                r.deliver_ns,
                r.error,
                r.resends,
            )
        writer.flush()
        return RecordSource([11, 12], lambda: iter_records(self.run_dir), "test")


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    s = Scenario(tmp_path / "run")
    for seq in range(1, 6):
        s.add(11, seq)
    s.add(12, 1)
    s.add(12, 2)
    s.add(12, 3, klass=LIVE)
    return s


async def verify(store: MessageStore, s: Scenario, **kwargs: Any) -> dict[str, Any]:
    await store.insert(s.docs)
    return await Verifier(store.collection, **kwargs).verify(s.source())


async def test_clean_run_passes(message_store: MessageStore, scenario: Scenario) -> None:
    """Every acked message stored once at its seq with its ts: pass, with live and bulk
    latencies reported apart."""
    result = await verify(message_store, scenario, options=FAST)
    assert result["verdict"] == "pass", result["examples"]
    assert result["counts"]["persisted"] == result["counts"]["acked"] == 8
    assert result["latency"]["live"]["ack"]["count"] == 1
    assert result["latency"]["bulk"]["ack"]["count"] == 7


async def test_deleted_message_is_missing(message_store: MessageStore, scenario: Scenario) -> None:
    """A deleted document is reported missing and as a seq gap."""
    await message_store.insert(scenario.docs)
    await message_store.collection.delete_one({"chat_id": 11, "seq": 3})
    result = await Verifier(message_store.collection, FAST).verify(scenario.source())
    assert result["verdict"] == "fail"
    assert result["violations"]["missing"] == 1
    assert result["violations"]["seq_gap"] == 1


async def test_altered_ts_fails(message_store: MessageStore, scenario: Scenario) -> None:
    """A stored ts that differs from the ack's, and one that goes backwards, both fail."""
    docs = scenario.docs
    docs[3] = msgspec.structs.replace(docs[3], ts=docs[3].ts - 1000)
    result = await verify(message_store, scenario, options=FAST)
    assert result["violations"]["ts_mismatch"] == 1
    assert result["violations"]["ts_decrease"] == 1


async def test_ack_ts_outside_send_window_fails(
    message_store: MessageStore, scenario: Scenario
) -> None:
    """An ack whose ts is later than the moment the ack arrived breaks the window check."""
    r = scenario.rows[0]
    scenario.rows[0] = replace(r, ack_ns=r.ack_ns - 20_000_000, send_ns=r.send_ns - 20_000_000)
    result = await verify(message_store, scenario, options=FAST)
    assert result["violations"]["ts_window"] == 1
    assert result["verdict"] == "fail"


async def test_duplicate_and_unexpected_documents_fail(
    message_store: MessageStore, scenario: Scenario
) -> None:
    """A client_id stored twice is a duplicate; a document no record explains is unexpected."""
    scenario.docs.append(
        NewMessage("dup", 11, 6, T0_MS + 99_999, 7, "lt", "r.0.0.11-5 again", [], "bulk")
    )
    scenario.docs.append(
        NewMessage("odd", 12, 4, T0_MS + 99_999, 7, "lt", "stranger hi", [], "bulk")
    )
    result = await verify(message_store, scenario, options=FAST)
    assert result["violations"]["duplicated"] == 1
    assert result["violations"]["unexpected"] == 1


async def test_unacked_but_persisted_is_not_a_violation(
    message_store: MessageStore, scenario: Scenario
) -> None:
    """A send whose ack timed out but which the platform accepted counts as persisted
    without ack, not as a failure."""
    scenario.add(12, 4, ack=False)
    result = await verify(message_store, scenario, options=FAST)
    assert result["verdict"] == "pass", result["examples"]
    assert result["counts"]["persisted_unacked"] == 1
    assert result["counts"]["errors"] == {"timeout": 1}


async def test_queue_counter_ahead_of_storage_fails(
    message_store: MessageStore, scenario: Scenario
) -> None:
    """When Redis assigned seqs the database never got, the tail is reported missing."""

    async def counters(chat_ids: list[int]) -> dict[int, int]:
        return {11: 7, 12: 3}

    result = await verify(message_store, scenario, options=FAST, seq_counters=counters)
    assert result["violations"]["queue_tail_missing"] == 2


async def test_spilled_buckets_give_the_same_verdict(
    message_store: MessageStore, scenario: Scenario, tmp_path: Path
) -> None:
    """With buckets of two rows (records spilled to disk) the counts and the verdict are
    those of the in-memory join."""
    await message_store.insert(scenario.docs)
    await message_store.collection.delete_one({"chat_id": 12, "seq": 2})
    options = VerifyOptions(settle_timeout_s=2.0, settle_quiet_s=1.0, bucket_rows=2, chat_group=1)
    result = await Verifier(message_store.collection, options).verify(
        scenario.source(), spill_dir=tmp_path
    )
    assert result["counts"]["persisted"] == 7
    assert result["violations"]["missing"] == 1
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("tmp*"))), "spill files removed"


async def test_empty_run_fails(message_store: MessageStore, tmp_path: Path) -> None:
    """A run that acked nothing proves nothing: fail."""
    source = RecordSource([1], lambda: iter(()), "empty")
    result = await Verifier(message_store.collection, FAST).verify(source)
    assert result["violations"]["nothing_acked"] == 1
