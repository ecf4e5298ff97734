"""Load-generator benchmark: generator CPU per message against gateway CPU per message,
measured in the same run (the issue's bar: one generator core must saturate at least one
gateway core).

Phases, each against a fresh local stack (:class:`chat.localstack.LocalStack`: embedded
Redis, SecantusDB and SQLite, services as child processes):

1. **ack path**: gateway only, one generator process sending over WebSocket at a rate
   above what one gateway core accepts. Generator CPU = its worker process's
   ``process_time`` (connections, scheduling, JSON, records, histograms); gateway CPU =
   the gateway process's CPU time (psutil) over the same run. The ratio is how many
   gateway cores one generator core keeps busy.
2. **full path**: gateway, worker and priority; a rate the embedded SecantusDB persists
   (~2k msg/s): each message is also fanned out back to its chat's members, so both sides
   pay for ``message`` frames as well (generator: decode and match; gateway: forward).
3. **HTTP route**: phase 1 over ``POST /api/v1/chats/{id}/messages`` instead.

``BENCH_SCALE`` (default 1.0) scales the run lengths.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the lock

from benchmarks.harness import main, table
from chat.config import load_settings
from chat.localstack import LocalStack, free_port
from loadtest.runner import RunConfig, read_results
from loadtest.runner import run as run_shard

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))


class CpuSampler(threading.Thread):
    """The CPU seconds of a process, sampled every 0.1 s with the wall clock."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self._proc = proc
        self._done = threading.Event()
        self.samples: list[tuple[float, float]] = []

    def _sample(self) -> None:
        t = self._proc.cpu_times()
        self.samples.append((time.time(), t.user + t.system))

    def run(self) -> None:
        while not self._done.wait(0.1):
            self._sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self._sample()

    def cpu_since(self, wall: float) -> float:
        """CPU seconds from the last sample at or before ``wall`` to the end."""
        start = max((c for t, c in self.samples if t <= wall), default=self.samples[0][1])
        return self.samples[-1][1] - start


def _phase(name: str, services: tuple[str, ...], **profile: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-loadtest-") as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "MONGO_URL", "SQL_URL", "REDIS_KEY_PREFIX", "MONGO_DB")
        }
        env.update(
            GATEWAY_PORT=str(free_port()),
            LOG_LEVEL="WARNING",
            LOG_FORMAT="console",
            STREAM_MAX_LEN="5000000",
        )
        stack = LocalStack(local_dir=Path(tmp) / "local", env=env, services=services)
        with stack.running():
            settings = load_settings(stack.resolved)
            gateway = psutil.Process(stack.procs["gateway"].pid)
            cfg = RunConfig(
                target=stack.gateway_url,
                out_dir=Path(tmp) / "runs",
                run_id=name,
                progress=False,
                observe_redis=False,
                probes=0,
                drain_s=5.0,
                **profile,
            )
            sampler = CpuSampler(gateway)
            sampler.start()
            try:
                _, run_dir = asyncio.run(run_shard(cfg, settings))
            finally:
                sampler.stop()
        results = read_results(run_dir)
    # Only from t0 on: provisioning (signup/login hash passwords) is not the message path.
    gateway_cpu = sampler.cpu_since(results["t0_ms"] / 1000)
    gen_cpu = results["generator"]["cpu_s"]
    bulk = results["totals"]["bulk"]
    acked, delivered = bulk["acked"], bulk["delivered"]
    duration = cfg.ramp_s + cfg.hold_s
    return {
        "transport": cfg.transport,
        "target_rate": cfg.rate,
        "acked": acked,
        "delivered": delivered,
        "acked_per_s": round(acked / duration, 1),
        "generator_cpu_s": round(gen_cpu, 3),
        "gateway_cpu_s": round(gateway_cpu, 3),
        "generator_us_per_msg": round(gen_cpu / acked * 1e6, 1) if acked else None,
        "gateway_us_per_msg": round(gateway_cpu / acked * 1e6, 1) if acked else None,
        "gateway_cores_per_generator_core": round(gateway_cpu / gen_cpu, 2) if gen_cpu else None,
        "gateway_core_utilisation": round(gateway_cpu / duration, 2),
        "bulk_ack_p99_ms": results["latency"]["bulk"]["ack"].get("p99_ms"),
    }


def run() -> dict[str, Any]:
    hold = max(4.0, 10.0 * SCALE)
    return {
        "ack_path": _phase(
            "ack", ("gateway",), rate=8000.0, ramp_s=2.0, hold_s=hold, users=80, chats=80
        ),
        "full_path": _phase(
            "full",
            ("gateway", "worker", "priority"),
            rate=1500.0,
            ramp_s=2.0,
            hold_s=hold,
            users=20,
            chats=20,
            chat_size="2",
        ),
        "http_route": _phase(
            "http",
            ("gateway",),
            rate=4000.0,
            ramp_s=2.0,
            hold_s=hold,
            users=40,
            chats=40,
            transport="http",
        ),
    }


def tables(result: Mapping[str, Any]) -> Iterable[str]:
    for phase, figures in result.items():
        yield table(f"loadtest {phase}", list(figures.items()))


if __name__ == "__main__":
    main(run, tables)
