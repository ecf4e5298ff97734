"""`python -m worker` as a real process: kill -9 and reclaim, graceful SIGTERM, --check.

The processes get the test servers and this test's key prefix / database through the
environment, exactly as `make run` and the container pass them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from chat.config import Settings
from chat.heartbeat import HEARTBEAT_STALE_S, check
from chat.storage.mongo import MessageStore
from chat.storage.sql import Directory
from chat.timestamps import datetime_to_ms
from tests.conftest import UNIT
from tests.integration.pipeline_support import (
    enqueue,
    make_users,
    queued,
    unacked,
    wait_until,
)


def service_env(settings: Settings, local_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a worker container would get, pointed at the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MONGO_", "SQL_"))}
    env.update(
        REDIS_URL=settings.redis_url.get_secret_value(),
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        MONGO_URL=settings.mongo_url.get_secret_value(),
        MONGO_DB=settings.mongo_db,
        SQL_URL=settings.sql_url.get_secret_value(),
        STREAM_PARTITIONS=str(settings.stream_partitions),
        S3_LOCAL_DIR=settings.s3_local_dir or "",
        JWT_SECRET=settings.effective_jwt_secret(),
        LOCAL_DIR=str(local_dir),
        HEALTH_HOST="127.0.0.1",
        HEALTH_PORT="0",
        LOG_FORMAT="json",
        BLOCK_MS="100",
        SHUTDOWN_TIMEOUT_S=str(10 * UNIT),
    )
    env.update(extra)
    return env


async def start_worker(env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", env=env, stdout=log, stderr=log
        )


async def run_check(env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "--check",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 20 * UNIT)


def heartbeat(local_dir: Path) -> dict[str, Any]:
    path = local_dir / "worker.heartbeat.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def consumer_pending(redis: Any, settings: Settings, consumer: str) -> int:
    from tests.integration.pipeline_support import keyspace

    total = 0
    for part in keyspace(settings).all():
        if not await redis.exists(part.bulk):
            continue
        summary = await redis.xpending(part.bulk, "worker")
        for row in summary.get("consumers") or ():
            if row["name"] in (consumer, consumer.encode()):
                total += int(row["pending"])
    return total


async def test_killed_worker_entries_are_reclaimed_nothing_lost_or_duplicated(
    redis: Any,
    settings: Settings,
    message_store: MessageStore,
    directory: Directory,
    tmp_path: Path,
) -> None:
    """kill -9 a worker in the middle of a batch: a second worker reclaims its pending
    entries; every accepted message is stored once and each chat's seqs are 1..N with
    non-decreasing ts."""
    (sender,) = await make_users(directory, "Hal")
    chats = (21, 22, 23, 24, 25, 26)
    accepted = await enqueue(redis, settings, [queued(c, sender) for c in chats * 300])
    first_env = service_env(settings, tmp_path / "a", BATCH="5", CONSUMER_NAME="doomed")
    first = await start_worker(first_env, tmp_path / "a.log")
    try:
        await wait_until(
            lambda: _at_most(unacked(redis, settings), len(accepted) - 100),
            within=30 * UNIT,
            what="the first worker to store and ack 100 messages",
        )
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        await stop_process(first)
    orphaned = await consumer_pending(redis, settings, "doomed")
    assert orphaned > 0, "the worker was not killed mid-batch"
    assert await message_store.collection.count_documents({}) < len(accepted)
    second_env = service_env(
        settings, tmp_path / "b", BATCH="200", CLAIM_IDLE_MS="500", CONSUMER_NAME="heir"
    )
    second = await start_worker(second_env, tmp_path / "b.log")
    try:
        await wait_until(
            lambda: _equals(unacked(redis, settings), 0),
            within=60 * UNIT,
            what="the second worker to drain the streams",
        )
        await wait_until(
            lambda: heartbeat(tmp_path / "b").get("counters", {}).get("reclaimed", 0) > 0,
            what="the heartbeat to show reclaimed entries",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 20 * UNIT) == 0
    assert await consumer_pending(redis, settings, "doomed") == 0
    docs = [d async for d in message_store.collection.find({}, {"chat_id": 1, "seq": 1, "ts": 1})]
    assert sorted(d["_id"] for d in docs) == sorted(a.id for a in accepted)
    by_chat: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for d in docs:
        by_chat[d["chat_id"]].append((d["seq"], datetime_to_ms(d["ts"])))
    for chat in chats:
        rows = sorted(by_chat[chat])
        assert [seq for seq, _ in rows] == list(range(1, 301))
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(rows))


async def test_sigterm_finishes_the_batch_in_hand_and_check_follows_state(
    redis: Any,
    settings: Settings,
    message_store: MessageStore,
    directory: Directory,
    tmp_path: Path,
) -> None:
    """A running worker answers /healthz, /readyz, /metrics and --check 0; on SIGTERM it
    finishes and acks the batch it holds, exits 0 with a summary, and --check turns 1."""
    (sender,) = await make_users(directory, "Ivy")
    local = tmp_path / "w"
    env = service_env(settings, local, BATCH="5", CONSUMER_NAME="graceful")
    assert await run_check(env) == 1  # no heartbeat yet
    total = 4500
    await enqueue(redis, settings, [queued(c, sender) for c in (31, 32, 33) * (total // 3)])
    proc = await start_worker(env, tmp_path / "w.log")
    try:
        await wait_until(lambda: bool(heartbeat(local)), within=30 * UNIT, what="heartbeat")
        port = heartbeat(local)["health_port"]
        async with aiohttp.ClientSession() as http:
            for path, status in (("/healthz", 200), ("/readyz", 200)):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == status, await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert "chat_persisted_total" in await resp.text()
        assert await run_check(env) == 0
        await wait_until(
            lambda: _at_most(unacked(redis, settings), total - 50),
            within=30 * UNIT,
            what="some messages stored",
        )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20 * UNIT) == 0
    finally:
        await stop_process(proc)
    assert await consumer_pending(redis, settings, "graceful") == 0
    assert await message_store.collection.count_documents({}) < total, "stopped too late"
    final = heartbeat(local)
    assert final["state"] == "stopped"
    assert final["counters"]["processed"] == await message_store.collection.count_documents({})
    assert await run_check(env) == 1
    lines = (tmp_path / "w.log").read_text().splitlines()
    log_lines = [json.loads(line) for line in lines if line.startswith("{")]
    (summary,) = [e for e in log_lines if e.get("event") == "consumer stopped"]
    assert summary["processed"] == final["counters"]["processed"]
    assert summary["cancelled"] == 0


def test_check_rejects_a_stale_or_unhealthy_heartbeat(tmp_path: Path) -> None:
    """--check's verdict: fresh and healthy passes; stale, stuck or stopped fails."""
    path = tmp_path / "worker.heartbeat.json"
    now = time.time()

    def write(**fields: object) -> None:
        base: dict[str, object] = {"time": now, "state": "running", "healthy": True}
        base.update(fields)
        path.write_text(json.dumps(base))

    write()
    assert check(tmp_path, "worker", now=now)[0]
    assert not check(tmp_path, "worker", now=now + HEARTBEAT_STALE_S + 1)[0]
    write(healthy=False)
    assert not check(tmp_path, "worker", now=now)[0]
    write(state="stopped")
    assert not check(tmp_path, "worker", now=now)[0]
    path.write_text("{not json")
    assert not check(tmp_path, "worker", now=now)[0]


async def _at_most(value: Any, n: int) -> bool:
    return bool(await value <= n)


async def _equals(value: Any, n: int) -> bool:
    return bool(await value == n)
