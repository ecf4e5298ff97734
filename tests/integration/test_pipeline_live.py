"""Live first (DESIGN.md invariant 3): the priority service does not wait for the bulk
backlog. Both services run from their factories against real servers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY

from chat.config import Settings
from chat.pipeline import ConsumerService, options_for
from chat.serialization import Priority
from chat.storage.mongo import InsertOutcome, MessageStore, NewMessage
from chat.storage.sql import Directory
from priority.app import build_consumer as build_priority
from tests.integration.pipeline_support import (
    Inbox,
    enqueue,
    make_users,
    queued,
    running,
    unacked,
    wait_until,
)
from worker.app import build_consumer as build_worker

BACKLOG = 20_000
LIVE_CHAT = 900


async def test_live_messages_overtake_a_bulk_backlog(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """With tens of thousands of bulk entries queued and a worker draining them, live
    messages are persisted and published while most of the bulk backlog is still there."""
    human, bot = await make_users(directory, "Human", "Bot")
    settings = settings.with_overrides(block_ms=100, live_block_ms=50, consumer_name="t")
    await enqueue(redis, settings, [queued(1 + i % 50, bot) for i in range(BACKLOG)])
    worker, priority = build_worker(settings), build_priority(settings)
    async with Inbox(redis, settings) as inbox:
        inbox.subscriber.subscribe(LIVE_CHAT)
        async with running(worker), running(priority):
            await inbox.joined(priority.publisher.publish, LIVE_CHAT)
            await wait_until(
                lambda: _below(unacked(redis, settings, "bulk"), BACKLOG),
                what="the worker to be draining the backlog",
            )
            live = [queued(LIVE_CHAT, human, text=f"now {i}", priority="live") for i in range(5)]
            accepted = await enqueue(redis, settings, live)
            await wait_until(lambda: len(inbox.frames) == 5, what="the live frames")
            bulk_left = await unacked(redis, settings, "bulk")
            live_docs = await message_store.collection.count_documents({"chat_id": LIVE_CHAT})
    assert [f.id for f in inbox.frames] == [a.id for a in accepted]
    assert {f.priority for f in inbox.frames} == {"live"}
    assert live_docs == 5
    assert bulk_left > BACKLOG // 2, f"only {bulk_left} bulk entries were left"
    assert worker.consumer.stats.processed < BACKLOG // 2


class RecordingStore:
    """The real MessageStore, logging every insert (class, documents) in completion order
    into a log shared by both services, and the most inserts it ever saw at once."""

    def __init__(self, inner: MessageStore, log: list[tuple[Priority, int]], cls: Priority):
        self.inner, self.log, self.cls = inner, log, cls
        self.inflight = self.peak = 0

    async def ensure_indexes(self) -> None:
        await self.inner.ensure_indexes()

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            return await self.inner.insert(messages)
        finally:
            self.inflight -= 1
            self.log.append((self.cls, len(messages)))


THROTTLED_BACKLOG = 10_000
MIN_BATCH = 10


async def test_the_worker_yields_the_database_to_live_inserts(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """Draining a large bulk backlog into the real database, the worker never has more
    than BULK_MAX_INFLIGHT_INSERTS inserts in flight over its partitions, its inserts
    shrink while they exceed BULK_INSERT_BUDGET_MS (here shorter than any round trip, so
    every insert is over budget whatever the machine), and a live message sent meanwhile
    is stored after only a small part of the backlog."""
    human, bot = await make_users(directory, "Human", "Bot")
    settings = settings.with_overrides(
        block_ms=100,
        live_block_ms=50,
        consumer_name="t",
        batch=500,
        bulk_max_inflight_inserts=1,
        bulk_insert_budget_ms=0.001,
        bulk_min_batch=MIN_BATCH,
    )
    assert settings.stream_partitions > 1  # one reader each: they would insert at once
    await enqueue(redis, settings, [queued(1 + i % 50, bot) for i in range(THROTTLED_BACKLOG)])
    log: list[tuple[Priority, int]] = []
    bulk_store = RecordingStore(message_store, log, "bulk")
    worker = ConsumerService(
        settings, options_for(settings, "bulk"), service="worker", store=bulk_store
    )
    priority = ConsumerService(
        settings,
        options_for(settings, "live"),
        service="priority",
        store=RecordingStore(message_store, log, "live"),
    )
    worker.consumer.sizer.size = settings.batch  # as if grown before the database slowed
    async with Inbox(redis, settings) as inbox:
        inbox.subscriber.subscribe(LIVE_CHAT)
        async with running(worker), running(priority):
            await inbox.joined(priority.publisher.publish, LIVE_CHAT)
            await wait_until(lambda: len(log) >= 8, what="the worker's first inserts")
            live = [queued(LIVE_CHAT, human, text="now", priority="live")]
            sent_at = len(log)
            await enqueue(redis, settings, live)
            await wait_until(lambda: len(inbox.of_chat(LIVE_CHAT)) == 1, what="the live frame")
    bulk_sizes = [n for cls, n in log if cls == "bulk"]
    live_at = log.index(("live", 1))
    bulk_while_live_waited = sum(n for cls, n in log[sent_at:live_at] if cls == "bulk")
    # Never more than one bulk insert at once, over 4 partition readers.
    assert bulk_store.peak == 1
    assert worker.consumer.inflight_peak == 1
    # Every insert over budget halves the size, down to the floor; the first one was a
    # full batch, and no insert ever exceeded the size the sizer had reached by then.
    assert bulk_sizes[0] == settings.batch
    assert all(n <= max(MIN_BATCH, settings.batch >> i) for i, n in enumerate(bulk_sizes))
    assert bulk_sizes[-1] <= MIN_BATCH
    assert worker.consumer.sizer.size == MIN_BATCH
    target = REGISTRY.get_sample_value("chat_batch_target", {"priority": "bulk"})
    assert target == MIN_BATCH
    # The live message was stored while nearly all the backlog was still queued, and
    # behind a small share of it (the floor-sized inserts in flight meanwhile).
    assert live_at > sent_at
    assert bulk_while_live_waited < THROTTLED_BACKLOG // 10, bulk_while_live_waited
    assert sum(n for cls, n in log[:live_at] if cls == "bulk") < THROTTLED_BACKLOG // 2
    assert worker.consumer.stats.processed < THROTTLED_BACKLOG // 2


async def _below(value: Any, n: int) -> bool:
    return bool(await value < n)
