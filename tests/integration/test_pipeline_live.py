"""Live first (DESIGN.md invariant 3): the priority service does not wait for the bulk
backlog. Both services run from their factories against real servers."""

from __future__ import annotations

from typing import Any

from chat.config import Settings
from chat.storage.mongo import MessageStore
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


async def _below(value: Any, n: int) -> bool:
    return bool(await value < n)
