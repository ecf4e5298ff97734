"""Real runs against the local stack (gateway, worker, priority on the CI servers):
the generator's records verify against MongoDB, with and without a killed worker, and
verify fails once the database loses a message or a ts is altered."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from loadtest.manifest import ChatEntry, read_manifests
from loadtest.report import build_report
from loadtest.runner import RunConfig, read_results
from loadtest.runner import run as run_shard
from loadtest.verify import VerifyOptions
from loadtest.verifyrun import verify_run
from tests.conftest import UNIT
from tests.loadtest.conftest import RunningStack

pytestmark = pytest.mark.slow


def config(stack: RunningStack, out: Path, run_id: str, **changes: object) -> RunConfig:
    base = RunConfig(
        target=stack.url,
        rate=100.0,
        ramp_s=1.0,
        hold_s=3.0,
        users=6,
        chats=6,
        chat_size="1-3",
        message_size="40-200",
        processes=1,
        probes=2,
        probe_interval_s=0.5,
        run_id=run_id,
        out_dir=out,
        drain_s=10.0 * UNIT,
        progress=False,
        provision_concurrency=4,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def verify_cli(stack: RunningStack, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in stack.local.resolved.items()}
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "verify", str(run_dir), "--settle-timeout", "5"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )


async def test_short_run_verifies_and_tampering_fails(stack: RunningStack, tmp_path: Path) -> None:
    """A short open-loop run (bulk + live probes) is fully acked, persisted once with the
    acked seq/ts, and verify passes; after one document is deleted, and after another's
    ts is altered, `python -m loadtest verify` exits non-zero naming the violation."""
    cfg = config(stack, tmp_path, "short")
    code, run_dir = await run_shard(cfg, stack.settings)
    results = read_results(run_dir)
    assert code == 0, (results["problems"], stack.log_tail())
    assert results["totals"]["bulk"]["sent"] == cfg.schedule.total
    assert results["totals"]["live"]["acked"] > 0
    assert results["redis"]["end"]["streams"], "the Redis snapshot holds the partition streams"

    result = await verify_run(run_dir, stack.settings, VerifyOptions(settle_timeout_s=60 * UNIT))
    counts = result["counts"]
    assert result["verdict"] == "pass", (result["violations"], result["examples"])
    assert (
        counts["acked"]
        == counts["sent"]
        == counts["persisted"]
        == cfg.schedule.total + results["totals"]["live"]["sent"]
    )
    assert result["latency"]["live"]["e2e"]["count"] > 0
    assert result["latency"]["bulk"]["e2e"]["count"] > 0
    report = build_report(run_dir)
    assert "PASS" in report.read_text()

    client: MongoClient[dict[str, Any]] = MongoClient(stack.local.resolved["MONGO_URL"])
    coll = client[stack.settings.mongo_db]["messages"]
    try:
        chat_id = min(c.chat_id for c in _manifest_chats(run_dir))
        victim = coll.find_one({"chat_id": chat_id, "seq": 2})
        assert victim is not None
        coll.delete_one({"_id": victim["_id"]})
        deleted = verify_cli(stack, run_dir)
        assert deleted.returncode == 1, deleted.stdout + deleted.stderr
        assert "missing" in deleted.stdout
        assert "seq_gap" in deleted.stdout

        coll.insert_one(victim)  # restore, then break a timestamp instead
        other = coll.find_one({"chat_id": chat_id, "seq": 1})
        assert other is not None
        coll.update_one({"_id": other["_id"]}, {"$set": {"ts": other["ts"].replace(year=2001)}})
        altered = verify_cli(stack, run_dir)
        assert altered.returncode == 1, altered.stdout + altered.stderr
        assert "ts_mismatch" in altered.stdout
    finally:
        client.close()


def _manifest_chats(run_dir: Path) -> list[ChatEntry]:
    return [c for m in read_manifests(run_dir) for c in m.chats if c.klass == "bulk"]


async def test_run_with_killed_worker_loses_nothing(stack: RunningStack, tmp_path: Path) -> None:
    """The bulk worker is SIGKILLed mid-run and restarted: its unacknowledged entries are
    reclaimed, and verify still finds every acked message stored exactly once."""
    cfg = config(stack, tmp_path, "killed", hold_s=5.0, probes=1)

    async def kill_and_restart() -> int | None:
        await asyncio.sleep(2.0)
        code = await asyncio.to_thread(stack.local.stop_service, "worker", kill=True)
        await asyncio.sleep(1.5)
        stack.local.start_service("worker")
        return code

    chaos = asyncio.create_task(kill_and_restart())
    code, run_dir = await run_shard(cfg, stack.settings)
    assert await chaos == -9, "the worker was SIGKILLed mid-run"
    assert code == 0, stack.log_tail()
    result = await verify_run(run_dir, stack.settings, VerifyOptions(settle_timeout_s=90 * UNIT))
    assert result["verdict"] == "pass", (result["violations"], result["examples"], stack.log_tail())
    assert result["counts"]["missing"] == 0
    assert result["counts"]["persisted"] == result["counts"]["acked"] == result["counts"]["sent"]
