"""The message pipeline of one consumer process: its connections and supervised parts.

:class:`ConsumerService` owns everything a worker or priority process holds (Redis,
MongoDB and SQL pools, the attachment store, the fan-out PUB socket) and exposes the
:class:`chat.service.Host` interface the runner drives: the consumer itself, the fan-out
registry refresher and, when ``CLOUDWATCH_NAMESPACE`` is set, the stream-lag publisher.
The services differ only in the :class:`~chat.consumer.ConsumerOptions` they pass
(:func:`options_for`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from chat import redisconn
from chat.config import Settings
from chat.consumer import Consumer, ConsumerOptions, InsertPacing, Sink, Store
from chat.enrich import Enricher
from chat.fanout import GatewayRegistry, Publisher
from chat.keys import BULK_GROUP, LIVE_GROUP, KeySpace
from chat.pressure import DbShare, InsertLatencyReporter, PressureFollower
from chat.serialization import Priority
from chat.service import Part, Supervised, counters_of
from chat.storage import attachments as attachment_storage
from chat.storage import mongo, sql

log = logging.getLogger(__name__)

#: A Mongo call that has not answered in this long is treated as a dead connection
#: (retried), so a half-open socket cannot hang a reader forever.
MONGO_SOCKET_TIMEOUT_MS = 30_000


def consumer_name(settings: Settings) -> str:
    """CONSUMER_NAME, else hostname-pid (unique per process: a restart is a new consumer
    whose predecessor's entries are reclaimed)."""
    return settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


def options_for(settings: Settings, priority: Priority) -> ConsumerOptions:
    """The bulk class is throughput-tuned (BATCH, BLOCK_MS, CLAIM_IDLE_MS) and kept from
    hogging the database (BULK_MAX_INFLIGHT_INSERTS, BULK_INSERT_BUDGET_MS,
    BULK_MIN_BATCH); the live class is latency-tuned (LIVE_BATCH, LIVE_BLOCK_MS,
    LIVE_CLAIM_IDLE_MS) and unthrottled: its inserts are small and are the ones the
    bulk limits make room for."""
    live = priority == "live"
    batch = settings.live_batch if live else settings.batch
    return ConsumerOptions(
        priority=priority,
        group=LIVE_GROUP if live else BULK_GROUP,
        consumer=consumer_name(settings),
        batch=batch,
        block_ms=settings.live_block_ms if live else settings.block_ms,
        claim_idle_ms=settings.live_claim_idle_ms if live else settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
        max_inflight_inserts=None if live else settings.bulk_max_inflight_inserts or None,
        insert_budget_ms=None if live else settings.bulk_insert_budget_ms or None,
        min_batch=batch if live else min(settings.bulk_min_batch, batch),
    )


def live_pressure(
    settings: Settings, priority: Priority, redis: Any, keyspace: KeySpace
) -> tuple[InsertPacing | None, Part | None]:
    """The consumer's side of the live-pressure loop (:mod:`chat.pressure`) and the part
    that runs it: priority reports its insert times; the worker, unless
    BULK_YIELD_TARGET_MS is 0, follows them with a :class:`DbShare`."""
    interval = settings.live_pressure_interval_ms / 1000
    key = keyspace.live_pressure
    if priority == "live":
        reporter = InsertLatencyReporter(redis, key, interval)
        return reporter, Supervised("live-pressure", reporter.run)
    if not settings.bulk_yield_target_ms:
        return None, None
    share = DbShare(target_ms=settings.bulk_yield_target_ms, min_share=settings.bulk_min_db_share)
    follower = PressureFollower(redis, key, interval, share)
    return share, Supervised("live-pressure", follower.run)


class ConsumerService:
    """A consumer process's resources and parts (the runner's :class:`~chat.service.Host`).

    Construction opens nothing (clients connect lazily), so tests build one, run it and
    close it; ``store`` and ``sink`` replace the database or the fan-out (benchmarks).
    """

    def __init__(
        self,
        settings: Settings,
        options: ConsumerOptions,
        *,
        service: str,
        store: Store | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
        self.redis: Any = redisconn.connect(settings)
        self.mongo = mongo.connect(
            settings.mongo_url.get_secret_value(), socketTimeoutMS=MONGO_SOCKET_TIMEOUT_MS
        )
        self.messages = mongo.MessageStore(self.mongo, settings.mongo_db)
        self.engine = sql.create_engine(settings.sql_url.get_secret_value())
        self.directory = sql.Directory(self.engine)
        self.attachments = attachment_storage.from_settings(settings)
        registry = GatewayRegistry(self.redis, self.keyspace, settings.fanout_registry_ttl_s)
        self.publisher = Publisher(registry)
        self.pacing, pressure = live_pressure(settings, options.priority, self.redis, self.keyspace)
        self.consumer = Consumer(
            self.redis,
            self.keyspace,
            options,
            store=store or self.messages,
            enricher=Enricher(self.directory, self.attachments),
            sink=sink or self.publisher,
            pacing=self.pacing,
        )
        self._parts: list[Part] = [
            Supervised("consumer", self.consumer.run),
            Supervised("fanout", self.publisher.run),
        ]
        if pressure is not None:
            self._parts.append(pressure)
        lag_publisher = self._lag_publisher()
        if lag_publisher is not None:
            self._parts.append(lag_publisher)

    def _lag_publisher(self) -> Part | None:
        """CloudWatch stream-lag publisher (autoscaling input) when a namespace is set."""
        namespace = self.settings.cloudwatch_namespace
        if not namespace:
            return None
        import boto3

        from chat.cloudwatch import LagPublisher

        client = boto3.client("cloudwatch", region_name=self.settings.aws_region)
        pacing = self.pacing
        share = (lambda: pacing.share) if isinstance(pacing, DbShare) else None
        publisher = LagPublisher(client, namespace, self.service, self.consumer.lag, share=share)
        return Supervised("cloudwatch-lag", publisher.run)

    # ------------------------------------------------------------------ Host

    def parts(self) -> Sequence[Part]:
        return list(self._parts)

    def probes(self) -> Mapping[str, Callable[[], Awaitable[None]]]:
        return {
            "redis": self._ping_redis,
            "mongo": self.messages.ping,
            "sql": self.directory.ping,
            "pipeline": self._pipeline_flowing,
        }

    async def _ping_redis(self) -> None:
        await self.redis.ping()

    async def _pipeline_flowing(self) -> None:
        failing = sorted(self.consumer.failing)
        if failing:
            raise RuntimeError(f"retrying while unavailable: {', '.join(failing)}")

    def healthy(self) -> bool:
        return not self.consumer.stuck()

    def counters(self) -> Mapping[str, int]:
        counters = counters_of(self.consumer.stats)
        counters["published"] = self.publisher.published
        return counters

    async def run(self, stop: asyncio.Event) -> None:
        """Run the parts without the service runner (tests): until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            for part in self._parts:
                tg.create_task(part.run(stop), name=part.name)

    async def close(self) -> None:
        self.publisher.close()
        await self.redis.aclose()
        await self.mongo.close()
        await self.engine.dispose()
