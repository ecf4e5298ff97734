"""Pipeline benchmark: the enqueue script (gateway side) and the consumer (worker side).

Phases, each against servers this benchmark starts on loopback (so their CPU is theirs):

1. **enqueue, batched script**: ``Enqueuer.enqueue`` with 512-message batches spread over
   16 partitions (one script call per partition per batch), every message with a
   ``client_id`` (the WebSocket path: the idempotency key is written too).
2. **enqueue, gateway path**: ``BatchingEnqueuer.enqueue(message)`` from 1,000 concurrent
   senders: one future per message, coalesced per event-loop tick.
   For both: messages per CPU second of this (client) process, and Redis's own CPU per
   message from ``INFO cpu`` (used_cpu_user + used_cpu_sys delta).
3. **worker, null store**: the worker's ``ConsumerService`` drains those entries
   (Redis -> decode -> enrich (SQL names, cached) -> store -> publish -> XACK + trim)
   with a store that implements ``MessageStore.insert`` without a database, publishing
   to a real ZeroMQ subscriber in another process: the worker's own CPU per message.
4. **worker, SecantusDB**: the same with the real ``MessageStore`` on a SecantusDB server
   process, the insert time measured apart: which of worker CPU or database time limits
   the end-to-end rate.

``BENCH_SCALE`` (default 1.0) scales the message counts.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
from prometheus_client import REGISTRY

from benchmarks.harness import Meter, main, per_core, table
from chat.config import Settings, load_settings
from chat.fanout import GatewayRegistry
from chat.ids import new_message_id
from chat.keys import KeySpace
from chat.lifecycle import tune_gc
from chat.localstack import EmbeddedRedis, free_port, wait_for_port
from chat.pipeline import ConsumerService, options_for
from chat.serialization import QueuedMessage
from chat.storage import mongo
from chat.storage.mongo import InsertOutcome, MessageStore, NewMessage, to_document
from chat.storage.sql import Directory, create_engine, migrate
from chat.streams import BatchingEnqueuer, Enqueuer

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
N_BATCHED = int(200_000 * SCALE)
N_GATEWAY = int(100_000 * SCALE)
N_MONGO = int(10_000 * SCALE)
PARTITIONS = 16
CHATS = 2_000
USERS = 200
SENDERS = 1_000
TEXT = "x" * 64  # a typical chat line
#: A drain that makes no progress this long is a failure, not a slow result.
STALL_S = 30.0
#: Accounts are bots: the benchmark never logs in.
PASSWORD_HASH = "not-a-hash"  # noqa: S105
STAGES = ("read", "decode", "enrich", "store", "publish", "ack")

#: A ZeroMQ SUB in its own process standing in for a gateway subscribed to every chat:
#: the worker's PUB does the real per-message send work.
SINK = """
import signal, sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB)
s.setsockopt(zmq.RCVHWM, 1000000)
s.bind(sys.argv[1])
s.setsockopt(zmq.SUBSCRIBE, b"")
n = 0
signal.signal(signal.SIGTERM, lambda *a: (print(n, flush=True), sys.exit(0)))
while True:
    s.recv_multipart()
    n += 1
"""


class NullStore:
    """``MessageStore.insert`` without a server: each document is built and BSON-encoded
    as the real store does before sending (client-side CPU that stays in the worker),
    then reported inserted."""

    async def ensure_indexes(self) -> None:
        return None

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        now = datetime.now(UTC)
        for m in messages:
            bson.encode(to_document(m, now))
        return InsertOutcome(inserted=len(messages))


class TimedStore:
    """The real store, with the time spent inside ``insert`` added up."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.seconds = 0.0
        self.calls = 0

    async def ensure_indexes(self) -> None:
        await self.store.ensure_indexes()

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        outcome = await self.store.insert(messages)
        self.seconds += outcome.seconds
        self.calls += 1
        return outcome


def make_messages(n: int, senders: Sequence[int]) -> list[QueuedMessage]:
    rnd = random.Random(7)
    return [
        QueuedMessage(
            id=new_message_id(),
            chat_id=rnd.randrange(1, CHATS + 1),
            sender_id=rnd.choice(senders),
            text=TEXT,
            attachments=[],
            priority="bulk",
            client_id=f"c{i}-{new_message_id()}",  # unique: no idempotent resends
        )
        for i in range(n)
    ]


async def redis_cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def enqueuer(redis: Any, settings: Settings) -> Enqueuer:
    keyspace = KeySpace(settings.redis_key_prefix, PARTITIONS)
    return Enqueuer(redis, keyspace, idempotency_ttl_s=600, max_len=10_000_000)


async def bench_enqueue_batched(
    redis: Any, settings: Settings, senders: Sequence[int]
) -> dict[str, float]:
    enq = enqueuer(redis, settings)
    messages = make_messages(N_BATCHED, senders)
    await enq.enqueue(messages[:512])  # script loaded, connections open
    r0 = await redis_cpu(redis)
    with Meter() as m:
        for i in range(512, len(messages), 512):
            await enq.enqueue(messages[i : i + 512])
    r1 = await redis_cpu(redis)
    n = len(messages) - 512
    return _enqueue_figures(n, m, r1 - r0)


async def bench_enqueue_gateway(
    redis: Any, settings: Settings, senders: Sequence[int]
) -> dict[str, float]:
    enq = enqueuer(redis, settings)
    batching = BatchingEnqueuer(enq)
    messages = make_messages(N_GATEWAY, senders)
    per_sender = len(messages) // SENDERS

    async def sender(mine: list[QueuedMessage]) -> None:
        for message in mine:
            await batching.enqueue(message)

    r0 = await redis_cpu(redis)
    with Meter() as m:
        await asyncio.gather(
            *(sender(messages[i * per_sender : (i + 1) * per_sender]) for i in range(SENDERS))
        )
    r1 = await redis_cpu(redis)
    return _enqueue_figures(per_sender * SENDERS, m, r1 - r0)


def _enqueue_figures(n: int, m: Meter, redis_cpu_s: float) -> dict[str, float]:
    return {
        "messages": n,
        "wall_s": m.wall,
        "client_cpu_s": m.cpu,
        "msg_per_s_wall": n / m.wall,
        "msg_per_s_per_client_core": per_core(n, m.cpu),
        "client_us_per_msg": m.cpu / n * 1e6,
        "redis_cpu_s": redis_cpu_s,
        "redis_us_per_msg": redis_cpu_s / n * 1e6,
        "msg_per_s_per_redis_core": per_core(n, redis_cpu_s),
    }


def stage_sums() -> dict[str, float]:
    return {
        s: REGISTRY.get_sample_value("chat_stage_seconds_sum", {"stage": s}) or 0.0 for s in STAGES
    }


async def queued_entries(service: ConsumerService) -> int:
    return sum([await service.redis.xlen(p.bulk) for p in service.keyspace.all()])


async def drain(service: ConsumerService, redis: Any) -> dict[str, Any]:
    """Run the service until it has processed every queued entry; its figures."""
    total = await queued_entries(service)
    # As chat.service does after start-up: long-lived objects out of the collector's way.
    tune_gc()
    stop = asyncio.Event()
    s0, r0 = stage_sums(), await redis_cpu(redis)
    with Meter() as m:
        task = asyncio.create_task(service.run(stop))
        stalled_at, last = asyncio.get_running_loop().time(), 0
        # Polling an in-process counter: no Redis traffic inside the measured region.
        while service.consumer.stats.processed < total and not task.done():
            await asyncio.sleep(0.02)
            now, done = asyncio.get_running_loop().time(), service.consumer.stats.processed
            if done != last:
                stalled_at, last = now, done
            elif now - stalled_at > STALL_S:
                raise RuntimeError(f"worker stalled at {done}/{total} entries")
        stop.set()
        await task
    s1, r1 = stage_sums(), await redis_cpu(redis)
    processed = service.consumer.stats.processed
    figures: dict[str, Any] = {
        "messages": processed,
        "wall_s": m.wall,
        "worker_cpu_s": m.cpu,
        "msg_per_s_wall": processed / m.wall,
        "msg_per_s_per_worker_core": per_core(processed, m.cpu),
        "worker_us_per_msg": m.cpu / processed * 1e6,
        "redis_us_per_msg": (r1 - r0) / processed * 1e6,
        "published": service.publisher.published,
    }
    figures.update({f"stage_{k}_s": s1[k] - s0[k] for k in s1})
    return figures


def worker_service(settings: Settings, store: Any) -> ConsumerService:
    return ConsumerService(settings, options_for(settings, "bulk"), service="bench", store=store)


async def phases(settings: Settings, sink_endpoint: str) -> dict[str, Any]:
    engine = create_engine(settings.sql_url.get_secret_value())
    directory = Directory(engine)
    senders = [
        await directory.create_user(
            email=f"u{i}@bench", password_hash=PASSWORD_HASH, name=f"User {i}", kind="bot"
        )
        for i in range(USERS)
    ]
    await engine.dispose()
    probe = worker_service(settings, NullStore())
    redis = probe.redis
    results: dict[str, Any] = {}
    results["enqueue_batched"] = await bench_enqueue_batched(redis, settings, senders)
    results["enqueue_gateway"] = await bench_enqueue_gateway(redis, settings, senders)
    await GatewayRegistry(redis, probe.keyspace, 3600).announce(sink_endpoint)
    results["worker_null_store"] = await drain(probe, redis)
    await probe.close()
    return results


async def mongo_phase(settings: Settings) -> dict[str, Any]:
    client = mongo.connect(settings.mongo_url.get_secret_value())
    timed = TimedStore(MessageStore(client, settings.mongo_db))
    service = worker_service(settings, timed)
    engine = create_engine(settings.sql_url.get_secret_value())
    senders = [u.id for u in (await Directory(engine).users_by_id(range(1, USERS + 1))).values()]
    await engine.dispose()
    enq = enqueuer(service.redis, settings)
    messages = make_messages(N_MONGO, senders)
    for i in range(0, len(messages), 512):
        await enq.enqueue(messages[i : i + 512])
    figures = await drain(service, service.redis)
    figures["db_insert_s"] = timed.seconds
    figures["db_insert_calls"] = timed.calls
    # Insert time summed over the 16 readers divided by wall: how many readers were, on
    # average, waiting on the database (16 = every reader, all the time).
    figures["db_calls_in_flight"] = timed.seconds / figures["wall_s"]
    figures["limit"] = "database" if timed.seconds > figures["worker_cpu_s"] else "worker CPU"
    await client.drop_database(settings.mongo_db)
    await client.close()
    await service.close()
    return figures


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis", persistent=False)
        redis_server.start()
        mongo_port = free_port()
        mongo_server = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(mongo_port),
             "--storage-path", str(root / "mongo"), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        sink_port = free_port()
        sink = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", SINK, f"tcp://127.0.0.1:{sink_port}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        sql_url = f"sqlite+aiosqlite:///{root / 'chat.db'}"
        migrate(sql_url)
        try:
            wait_for_port("127.0.0.1", mongo_port, 60)
            settings = load_settings(
                {},
                redis_url=redis_server.url,
                mongo_url=f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true",
                mongo_db="bench",
                sql_url=sql_url,
                stream_partitions=PARTITIONS,
                s3_local_dir=str(root / "attachments"),
                local_dir=str(root / "local"),
                consumer_name="bench",
                log_level="WARNING",
            )
            results: dict[str, Any] = _run_loop(phases(settings, f"tcp://127.0.0.1:{sink_port}"))
            results["worker_secantusdb"] = _run_loop(mongo_phase(settings))
        finally:
            sink.send_signal(signal.SIGTERM)
            delivered, _ = sink.communicate(timeout=30)
            mongo_server.terminate()
            mongo_server.wait(30)
            redis_server.stop()
        results["gateway_sink_received"] = int(delivered.strip() or 0)
        results["scale"] = SCALE
        return results


def _run_loop(coro: Any) -> Any:
    import uvloop

    result: Any = uvloop.run(coro)
    return result


def tables(r: Mapping[str, Any]) -> Iterable[str]:
    for key, title in (
        ("enqueue_batched", "Enqueue: Enqueuer.enqueue, 512-message batches, 16 partitions"),
        ("enqueue_gateway", "Enqueue: BatchingEnqueuer (gateway path), 1,000 concurrent senders"),
    ):
        e = r[key]
        yield table(
            title,
            [
                ("messages", e["messages"]),
                ("msg/s per client core", e["msg_per_s_per_client_core"]),
                ("client CPU per msg (us)", e["client_us_per_msg"]),
                ("Redis CPU per msg (us)", e["redis_us_per_msg"]),
                ("msg/s per Redis core", e["msg_per_s_per_redis_core"]),
                ("msg/s wall (2 cores shared)", e["msg_per_s_wall"]),
            ],
        )
    for key, title in (
        ("worker_null_store", "Worker: Redis -> enrich -> null store -> publish -> XACK"),
        ("worker_secantusdb", "Worker: Redis -> enrich -> SecantusDB -> publish -> XACK"),
    ):
        w = r[key]
        rows: list[tuple[str, Any]] = [
            ("messages", w["messages"]),
            ("msg/s per worker core", w["msg_per_s_per_worker_core"]),
            ("worker CPU per msg (us)", w["worker_us_per_msg"]),
            ("Redis CPU per msg (us)", w["redis_us_per_msg"]),
            ("msg/s wall", w["msg_per_s_wall"]),
        ]
        if "db_insert_s" in w:
            rows += [
                ("DB insert time, summed over readers (s)", w["db_insert_s"]),
                ("readers waiting on the DB (avg of 16)", w["db_calls_in_flight"]),
                ("limit", w["limit"]),
            ]
        rows += [
            (f"stage {s} (s)", w[f"stage_{s}_s"])
            for s in ("read", "decode", "enrich", "store", "publish", "ack")
        ]
        yield table(title, rows)
    yield table("Fan-out", [("frames received by the gateway sink", r["gateway_sink_received"])])


if __name__ == "__main__":
    main(run, tables)
