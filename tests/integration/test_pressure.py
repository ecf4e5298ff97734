"""Live pressure (chat.pressure) on a real Redis, and in the real services: the priority
reports its insert times, the worker reads them and holds its inserts back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from chat import redisconn
from chat.config import Settings
from chat.consumer import MAX_PACING_DELAY_S
from chat.localstack import free_port
from chat.pipeline import ConsumerService, options_for
from chat.pressure import DbShare, InsertLatencyReporter, PressureFollower
from chat.storage.mongo import InsertOutcome, MessageStore, NewMessage
from chat.storage.sql import Directory
from priority.app import build_consumer as build_priority
from tests.conftest import UNIT
from tests.integration.pipeline_support import (
    enqueue,
    keyspace,
    make_users,
    queued,
    running,
    wait_until,
)
from worker.app import build_consumer as build_worker


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_the_reporter_writes_the_mean_of_its_inserts_and_it_expires(
    redis: Any, settings: Settings
) -> None:
    """Nothing observed, nothing written; otherwise the interval's mean in ms, with a TTL
    of two intervals, so the pressure ends soon after live traffic does."""
    key = keyspace(settings).live_pressure
    reporter = InsertLatencyReporter(redis, key, interval_s=0.1)
    assert await reporter.flush() is None
    assert await redis.exists(key) == 0
    reporter.inserted(10.0, 10.004)
    reporter.inserted(11.0, 11.006)
    assert await reporter.flush() == pytest.approx(5.0)
    assert float(await redis.get(key)) == pytest.approx(5.0)
    assert 0 < await redis.pttl(key) <= 200
    assert await reporter.flush() is None  # the sums were reset

    async def gone() -> bool:
        return bool(await redis.exists(key) == 0)

    await wait_until(gone, within=2 * UNIT, what="the report to expire")


async def test_the_key_holds_the_worst_recent_mean_of_every_priority_process(
    redis: Any, settings: Settings
) -> None:
    """A smaller report from another process does not hide a larger one; a larger one
    replaces it."""
    key = keyspace(settings).live_pressure
    a = InsertLatencyReporter(redis, key, interval_s=5.0)
    b = InsertLatencyReporter(redis, key, interval_s=5.0)
    a.inserted(0.0, 0.010)
    await a.flush()
    b.inserted(0.0, 0.002)
    await b.flush()
    assert float(await redis.get(key)) == pytest.approx(10.0)
    assert (a.written, b.written) == (1, 0)
    b.inserted(0.0, 0.030)
    await b.flush()
    assert float(await redis.get(key)) == pytest.approx(30.0)


async def test_the_follower_turns_reports_into_the_share_and_its_metrics(
    redis: Any, settings: Settings
) -> None:
    """Over target the share halves down to the floor; no report (expired, deleted) or a
    value that is not a number gives it back; the gauges show both."""
    key = keyspace(settings).live_pressure
    share = DbShare(target_ms=5, min_share=0.25, decrease=0.5, recover=0.1)
    follower = PressureFollower(redis, key, 0.05, share)
    await redis.set(key, "12.5", px=60_000)
    assert [await follower.step() for _ in range(3)] == [0.5, 0.25, 0.25]
    assert metric("chat_bulk_db_share") == 0.25
    assert metric("chat_live_pressure_ms") == 12.5
    await redis.delete(key)
    assert await follower.step() == pytest.approx(0.35)
    assert metric("chat_live_pressure_ms") == 0.0
    await redis.set(key, "fast", px=60_000)
    assert await follower.step() == pytest.approx(0.45)
    await redis.set(key, "4.0", px=60_000)
    assert await follower.step() == pytest.approx(0.5)  # under target: + increase


async def test_without_redis_nothing_fails_and_bulk_takes_the_database_back(
    settings: Settings,
) -> None:
    """Redis unreachable: the reporter skips its report, the follower reads "no
    pressure", so the share recovers; neither raises (a raise would stop the service)."""
    down = redisconn.connect(
        settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    )
    try:
        reporter = InsertLatencyReporter(down, "k", interval_s=0.05)
        reporter.inserted(0.0, 0.008)
        assert await reporter.flush() == pytest.approx(8.0)
        assert reporter.written == 0
        share = DbShare(target_ms=5, min_share=0.2, share=0.3, recover=0.1)
        follower = PressureFollower(down, "k", 0.05, share)
        assert await follower.read() is None
        assert await follower.step() == pytest.approx(0.4)
    finally:
        await down.aclose()


async def test_the_priority_reports_its_real_insert_times_while_live_traffic_flows(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """The running priority service writes the pressure key after live inserts, with a
    plausible mean (a real insert takes more than nothing and less than a second)."""
    (human,) = await make_users(directory, "Human")
    settings = settings.with_overrides(live_block_ms=50, live_pressure_interval_ms=50)
    key = keyspace(settings).live_pressure
    priority = build_priority(settings)
    async with running(priority):
        await enqueue(redis, settings, [queued(7, human, priority="live") for _ in range(20)])
        await wait_until(lambda: redis.exists(key), what="the priority's report")
        reported = float(await redis.get(key))
    assert priority.consumer.stats.processed == 20
    assert 0 < reported < 1000


class TimedStore:
    """The real MessageStore, recording (start, end) of every insert (perf_counter)."""

    def __init__(self, inner: MessageStore) -> None:
        self.inner = inner
        self.inserts: list[tuple[float, float]] = []

    async def ensure_indexes(self) -> None:
        await self.inner.ensure_indexes()

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        started = time.perf_counter()
        try:
            return await self.inner.insert(messages)
        finally:
            self.inserts.append((started, time.perf_counter()))


BACKLOG = 1_500
FLOOR = 0.25


def worker_with(
    settings: Settings, message_store: MessageStore
) -> tuple[ConsumerService, TimedStore]:
    """A worker on the timed real store: fixed 50-document inserts, quick readings."""
    store = TimedStore(message_store)
    settings = settings.with_overrides(
        block_ms=100,
        consumer_name="t",
        batch=50,
        bulk_min_batch=50,
        bulk_yield_target_ms=5,
        bulk_min_db_share=FLOOR,
        live_pressure_interval_ms=20,
    )
    worker = ConsumerService(settings, options_for(settings, "bulk"), service="worker", store=store)
    return worker, store


async def test_under_live_pressure_the_worker_idles_the_database_between_inserts(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """With a report over BULK_YIELD_TARGET_MS in Redis (what the priority writes while
    live inserts are slow), the running worker's share drops to BULK_MIN_DB_SHARE and
    from then on each insert starts at least d*(1-s)/s after the previous one ended
    (d: that insert's duration); the whole backlog is still stored, once."""
    (bot,) = await make_users(directory, "Bot")
    worker, store = worker_with(settings, message_store)
    assert isinstance(worker.pacing, DbShare)
    await redis.set(keyspace(settings).live_pressure, "40", px=600_000)
    yielded0 = metric("chat_bulk_yielded_seconds_total")
    floor_at: list[float] = []

    async def at_floor() -> bool:
        assert isinstance(worker.pacing, DbShare)
        if worker.pacing.share == FLOOR and not floor_at:
            floor_at.append(time.perf_counter())
        return bool(floor_at)

    async with running(worker):
        await wait_until(at_floor, interval=0.005, what="the share to reach its floor")
        await enqueue(redis, settings, [queued(1 + i % 30, bot) for i in range(BACKLOG)])
        await wait_until(
            lambda: worker.consumer.stats.processed == BACKLOG,
            within=60 * UNIT,
            what="the backlog to drain",
        )
    inserts = [(s, e) for s, e in store.inserts if s > floor_at[0]]
    assert len(inserts) >= BACKLOG // 50 - 1
    idle_factor = (1 - FLOOR) / FLOOR
    for (s0, e0), (s1, _) in itertools.pairwise(inserts):
        wanted = min((e0 - s0) * idle_factor, MAX_PACING_DELAY_S)
        assert s1 - e0 >= wanted - 0.001, (s1 - e0, wanted)
    assert metric("chat_bulk_yielded_seconds_total") > yielded0
    assert await message_store.collection.count_documents({}) == BACKLOG


async def test_without_live_pressure_the_worker_never_waits(
    redis: Any, settings: Settings, message_store: MessageStore, directory: Directory
) -> None:
    """No report in Redis: the share stays 1 and no insert is held back."""
    (bot,) = await make_users(directory, "Bot")
    worker, store = worker_with(settings, message_store)
    yielded0 = metric("chat_bulk_yielded_seconds_total")
    async with running(worker):
        await enqueue(redis, settings, [queued(1 + i % 30, bot) for i in range(300)])
        await wait_until(lambda: worker.consumer.stats.processed == 300, what="the drain")
        await asyncio.sleep(0.1)  # several readings of "no pressure"
    assert isinstance(worker.pacing, DbShare)
    assert worker.pacing.share == 1.0
    assert metric("chat_bulk_yielded_seconds_total") == yielded0
    assert len(store.inserts) >= 300 // 50


async def test_yielding_can_be_switched_off(settings: Settings) -> None:
    """BULK_YIELD_TARGET_MS=0: the worker has no pacing and no pressure part; the
    priority always reports."""
    off = build_worker(settings.with_overrides(bulk_yield_target_ms=0))
    on = build_worker(settings)
    live = build_priority(settings)
    try:
        assert off.pacing is None
        assert "live-pressure" not in {p.name for p in off.parts()}
        assert isinstance(on.pacing, DbShare)
        assert "live-pressure" in {p.name for p in on.parts()}
        assert isinstance(live.pacing, InsertLatencyReporter)
        assert "live-pressure" in {p.name for p in live.parts()}
    finally:
        for service in (off, on, live):
            await service.close()
