"""The stream consumer against real Redis, a real Mongo-wire server and real SQL.

Each test runs the worker's (or a tuned) ConsumerService in this event loop; isolation
comes from the per-test key prefix and Mongo database of the ``settings`` fixture.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from chat.config import Settings
from chat.ids import new_message_id
from chat.pipeline import ConsumerService, options_for
from chat.service import readiness
from chat.storage.attachments import LocalAttachments
from chat.storage.mongo import InsertOutcome, MessageStore, NewMessage, attachment_url
from chat.storage.sql import Directory
from chat.timestamps import datetime_to_ms
from tests.conftest import UNIT
from tests.integration.pipeline_support import (
    Inbox,
    TcpProxy,
    dead_letters,
    enqueue,
    keyspace,
    make_users,
    pending_count,
    queued,
    running,
    stream_len,
    unacked,
    wait_until,
)


def tuned(settings: Settings, **changes: object) -> Settings:
    """Test timings: short blocks (fast stop), short visibility timeout, small batches."""
    base: dict[str, object] = {
        "block_ms": 100,
        "claim_idle_ms": 300,
        "batch": 50,
        "consumer_name": f"c-{new_message_id()[-8:]}",
    }
    base.update(changes)
    return settings.with_overrides(**base)


def worker(settings: Settings, store: Any = None) -> ConsumerService:
    return ConsumerService(settings, options_for(settings, "bulk"), service="worker", store=store)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def doc_count(store: MessageStore) -> int:
    return await store.collection.count_documents({})


async def test_messages_are_enriched_persisted_published_and_trimmed(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """Queued messages end up in Mongo with sender name and attachment metadata, the
    members' gateway gets the `message` frames in seq order, and the acked entries are
    trimmed from the streams."""
    settings = tuned(settings)
    alice, bob = await make_users(directory, "Alice", "Bob")
    files = LocalAttachments(Path(settings.s3_local_dir or ""), settings.effective_jwt_secret())
    key = f"{alice}/{new_message_id()}"
    files.write(key, "image/png", b"\x89PNG12345")
    batch = [queued(101, alice, text=f"a{i}") for i in range(19)]
    batch.insert(5, queued(101, alice, text="pic", attachments=[key]))
    batch += [queued(202, bob, text=f"b{i}") for i in range(10)]
    service = worker(settings)
    async with Inbox(redis, settings) as inbox:
        inbox.subscriber.subscribe(101)
        async with running(service):
            await inbox.joined(service.publisher.publish, 101)
            accepted = await enqueue(redis, settings, batch)
            await wait_until(lambda: len(inbox.frames) >= 20, what="20 frames of chat 101")
            await wait_until(
                lambda: _equals(doc_count(message_store), 30), what="30 documents stored"
            )
            await wait_until(lambda: _equals(stream_len(redis, settings), 0), what="trim")
    frames = inbox.frames
    assert [f.seq for f in frames] == list(range(1, 21))
    assert {f.chat_id for f in frames} == {101}
    assert {f.sender_name for f in frames} == {"Alice"}
    (pic,) = [f for f in frames if f.text == "pic"]
    (att,) = pic.attachments
    assert (att.key, att.url, att.content_type, att.size) == (
        key,
        attachment_url(key),
        "image/png",
        9,
    )
    by_id = {a.id: a for a in accepted}
    async for doc in message_store.collection.find({}):
        acc = by_id[doc["_id"]]
        assert (doc["chat_id"], doc["seq"], datetime_to_ms(doc["ts"])) == (
            acc.chat_id,
            acc.seq,
            acc.ts,
        )
        assert doc["sender_name"] == ("Alice" if doc["chat_id"] == 101 else "Bob")
        assert doc["persisted_at"] is not None
    assert await pending_count(redis, settings) == 0


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


class CrashAfterInsert:
    """A store that persists the batch and then dies before the consumer can ack:
    the crash window at-least-once delivery exists for."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.inserted = 0

    async def ensure_indexes(self) -> None:
        await self.store.ensure_indexes()

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        outcome = await self.store.insert(messages)
        self.inserted += outcome.inserted
        raise RuntimeError("worker died between insert and XACK")


async def test_redelivered_entries_are_stored_exactly_once(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """A consumer that dies after inserting but before acking leaves its entries pending;
    another consumer reclaims and redelivers them: one document per message, all acked."""
    (sender,) = await make_users(directory, "Carol")
    messages = [queued(chat, sender) for chat in (1, 2, 3, 4) for _ in range(10)]
    await enqueue(redis, settings, messages)
    crashing = CrashAfterInsert(message_store)
    first = worker(tuned(settings), store=crashing)
    async with running(first, expect_crash=True) as task:
        await asyncio.wait([task], timeout=10 * UNIT)
    assert isinstance(task.exception(), ExceptionGroup)
    assert crashing.inserted > 0
    assert await pending_count(redis, settings) == 40  # nothing acked
    second = worker(tuned(settings))
    async with running(second):
        await wait_until(lambda: _equals(unacked(redis, settings), 0), what="all acked")
    stats = second.consumer.stats
    assert await doc_count(message_store) == 40
    assert stats.reclaimed == 40
    assert crashing.inserted <= stats.duplicates <= 40  # redelivered, already stored
    assert stats.processed == 40
    assert second.publisher.published == 40
    assert await stream_len(redis, settings) == 0


async def test_malformed_entries_are_dead_lettered_and_counted(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """Entries that cannot be decoded go to the dead-letter stream with their reason and
    fields, are counted and acked; good entries next to them are stored."""
    (sender,) = await make_users(directory, "Dan")
    await enqueue(redis, settings, [queued(7, sender, text="fine")])
    stream = keyspace(settings).for_chat(7).bulk
    bad_body = await redis.xadd(stream, {"m": b"\xc1not msgpack", "s": "2", "t": "1"})
    no_seq = await redis.xadd(stream, {"m": b"\x90", "t": "1"})
    before = metric("chat_dead_lettered_total", reason="malformed")
    service = worker(tuned(settings))
    async with running(service):
        await wait_until(lambda: _equals(unacked(redis, settings), 0), what="all acked")
        await wait_until(lambda: _equals(doc_count(message_store), 1), what="the good message")
    dead = await dead_letters(redis, settings)
    assert sorted(d[b"src"] for d in dead) == sorted([bad_body, no_seq])
    assert all(d[b"reason"].startswith(b"malformed:") for d in dead)
    assert {d[b"m"] for d in dead} == {b"\xc1not msgpack", b"\x90"}
    assert metric("chat_dead_lettered_total", reason="malformed") - before == 2
    assert service.consumer.stats.dead_lettered == 2
    assert await doc_count(message_store) == 1


async def test_entry_past_max_deliveries_is_dead_lettered_not_stored(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """An entry whose earlier consumers all died holding it (delivered max_deliveries
    times) is moved to the dead-letter stream on reclaim; one delivered fewer times is
    still stored."""
    (sender,) = await make_users(directory, "Eve")
    settings = tuned(settings, max_deliveries=3)
    poison, survivor = await enqueue(
        redis, settings, [queued(9, sender, text="poison"), queued(9, sender, text="ok")]
    )
    stream = keyspace(settings).for_chat(9).bulk
    await redis.xgroup_create(stream, "worker", id="0", mkstream=True)
    entries = await redis.xreadgroup("worker", "ghost", {stream: ">"})
    poison_id, survivor_id = (sid for sid, _ in entries[0][1])
    await redis.xclaim(stream, "worker", "ghost", 0, [poison_id, survivor_id])  # 2nd delivery
    await redis.xclaim(stream, "worker", "ghost", 0, [poison_id])  # 3rd: the limit
    before = metric("chat_dead_lettered_total", reason="max_deliveries")
    service = worker(settings)
    async with running(service):
        await wait_until(lambda: _equals(unacked(redis, settings), 0), what="all acked")
    (dead,) = await dead_letters(redis, settings)
    assert dead[b"src"] == poison_id
    assert dead[b"reason"] == b"max_deliveries: delivered 4 times"
    assert metric("chat_dead_lettered_total", reason="max_deliveries") - before == 1
    docs = [d async for d in message_store.collection.find({})]
    assert [d["_id"] for d in docs] == [survivor.id]
    assert poison.id != survivor.id


async def test_documents_rejected_by_mongo_are_dead_lettered(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """A document Mongo refuses for a reason other than a duplicate key (here a collection
    validator) is dead-lettered with the server's reason; the rest of its batch is stored."""
    (sender,) = await make_users(directory, "Frank")
    await message_store.collection.database.command(
        "collMod", "messages", validator={"text": {"$not": {"$regex": "^REJECT"}}}
    )
    await enqueue(
        redis,
        settings,
        [queued(11, sender, text="one"), queued(11, sender, text="REJECT me"), queued(11, sender)],
    )
    before = metric("chat_dead_lettered_total", reason="rejected by store")
    service = worker(tuned(settings))
    async with running(service):
        await wait_until(lambda: _equals(unacked(redis, settings), 0), what="all acked")
    (dead,) = await dead_letters(redis, settings)
    assert dead[b"reason"].startswith(b"rejected by store: 121")
    assert metric("chat_dead_lettered_total", reason="rejected by store") - before == 1
    assert sorted([d["seq"] async for d in message_store.collection.find({})]) == [1, 3]
    assert service.publisher.published == 2


async def test_mongo_outage_keeps_entries_pending_until_it_is_back(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """While Mongo is unreachable nothing is acked or dead-lettered, retries are counted
    and readiness fails; once it is back every message arrives exactly once."""
    (sender,) = await make_users(directory, "Gina")
    target = urllib.parse.urlparse(settings.mongo_url.get_secret_value())
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 27017)
    await proxy.start()
    proxied = tuned(settings, mongo_url=f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true")
    service = worker(proxied)
    retries_before = metric("chat_store_retries_total", store="mongo")
    try:
        async with running(service):
            await enqueue(redis, settings, [queued(5, sender, text="warm-up")])
            await wait_until(lambda: _equals(doc_count(message_store), 1), what="warm-up")
            await proxy.cut()
            await enqueue(redis, settings, [queued(c, sender) for c in (5, 6, 7, 8) * 5])
            await wait_until(lambda: "mongo" in service.consumer.failing, what="mongo failing")
            await wait_until(lambda: _equals(pending_count(redis, settings), 20), what="pending")
            await asyncio.sleep(0.5)
            ready, checks = await readiness(service, asyncio.Event())
            assert not ready
            assert checks["pipeline"] != "ok"
            assert await doc_count(message_store) == 1
            assert await pending_count(redis, settings) == 20
            assert await dead_letters(redis, settings) == []
            lag, oldest_age_s = await service.consumer.lag()  # the CloudWatch lag probe
            assert lag == 20
            assert oldest_age_s > 0
            await proxy.start()
            await wait_until(lambda: _equals(unacked(redis, settings), 0), what="drained")
            ready, checks = await readiness(service, asyncio.Event())
            assert ready, checks
            assert (await service.consumer.lag())[0] == 0
    finally:
        await proxy.cut()
    assert metric("chat_store_retries_total", store="mongo") > retries_before
    assert await doc_count(message_store) == 21
    assert service.consumer.stats.dead_lettered == 0


async def test_readiness_reports_draining_once_stop_is_set(
    settings: Settings, message_store: MessageStore
) -> None:
    """/readyz logic: ready with every dependency reachable, not ready once stopping."""
    service = worker(tuned(settings))
    try:
        stop = asyncio.Event()
        ready, checks = await readiness(service, stop)
        assert ready, checks
        stop.set()
        ready, checks = await readiness(service, stop)
        assert not ready
        assert checks["state"] == "draining"
    finally:
        await service.close()
