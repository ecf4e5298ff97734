"""``python -m loadtest run``: provision, start the generator processes and the probes,
aggregate their per-second stats, show progress, write ``results.json``.

The parent process does no bulk sending: it provisions accounts and chats, spawns
``processes`` :mod:`loadtest.worker` processes (each with its share of the rate and of
the accounts), runs the live probes, samples the Redis backlog once a second, and merges
what the workers report into one :class:`~loadtest.series.Series`. For a distributed AWS
run every ECS task is one such parent with ``--shard i/N`` and ``--rate R/N``; all start
at the same wall-clock ``--start-at``, so their seconds line up when gathered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing as mp
import queue
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from chat.cloudwatch import publish_live_latency
from chat.config import Settings
from chat.keys import KeySpace
from loadtest import histograms
from loadtest.distributions import IntDistribution
from loadtest.manifest import ChatEntry, Manifest, write_manifest
from loadtest.probes import Probes
from loadtest.progress import Progress, summary_lines
from loadtest.provision import (
    Account,
    Api,
    ChatPlan,
    create_chats,
    plan_chats,
    provision_accounts,
)
from loadtest.records import RecordWriter
from loadtest.redisinfo import RedisObserver
from loadtest.schedule import RateSchedule
from loadtest.series import Series
from loadtest.worker import WorkerConfig, worker_main

log = logging.getLogger(__name__)

RESULTS = "results.json"
#: The gateway closes a connection sending more than WS_FLOOD_PER_S (200) frames/s;
#: keep every connection well below it.
MAX_RATE_PER_CONNECTION = 150.0
READY_TIMEOUT_S = 300.0
#: How often the probes' latency goes to CloudWatch (LiveLatency) on AWS.
PUBLISH_EVERY_S = 20


@dataclass(frozen=True)
class RunConfig:
    target: str
    rate: float
    ramp_s: float
    hold_s: float
    start_rate: float = 0.0
    users: int = 20
    chats: int = 20
    chat_size: str = "2"
    message_size: str = "64-256"
    processes: int = 1
    transport: str = "ws"
    probes: int = 2
    probe_interval_s: float = 1.0
    run_id: str = ""
    shard: int = 0
    shards: int = 1
    start_at: float | None = None
    out_dir: Path = Path(".local/loadtest")
    account_prefix: str = "lt"
    password: str = "loadtest-password"  # noqa: S105 - load-test accounts only
    provision_concurrency: int = 16
    ack_timeout_s: float = 30.0
    drain_s: float = 15.0
    seed: int = 1
    progress: bool = True
    observe_redis: bool = True
    upload: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> RateSchedule:
        return RateSchedule(self.rate, self.ramp_s, self.hold_s, self.start_rate)

    def run_dir(self) -> Path:
        return self.out_dir / self.run_id

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data.pop("password")
        return data


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class Provisioned:
    accounts: list[Account]
    plans: list[ChatPlan]
    chat_ids: list[int]
    probes: list[Account]
    probe_chat: int | None


async def provision(api: Api, cfg: RunConfig) -> Provisioned:
    accounts = await provision_accounts(
        api,
        prefix=cfg.account_prefix,
        shard=cfg.shard,
        password=cfg.password,
        count=cfg.users,
        kind="loadtest",
        concurrency=cfg.provision_concurrency,
    )
    plans = plan_chats(
        cfg.users, cfg.chats, cfg.processes, IntDistribution.parse(cfg.chat_size), cfg.seed
    )
    title = f"loadtest {cfg.run_id}"
    chat_ids = await create_chats(api, accounts, plans, title, cfg.provision_concurrency)
    probes: list[Account] = []
    probe_chat = None
    if cfg.probes:
        probes = await provision_accounts(
            api,
            prefix=f"{cfg.account_prefix}-probe",
            shard=cfg.shard,
            password=cfg.password,
            count=cfg.probes,
            kind="human",
            concurrency=cfg.provision_concurrency,
        )
        probe_chat = await api.create_chat(
            probes[0].token, f"{title} probes", [a.user_id for a in probes[1:]]
        )
    return Provisioned(accounts, plans, chat_ids, probes, probe_chat)


def build_manifest(cfg: RunConfig, p: Provisioned) -> Manifest:
    chats = [
        ChatEntry(
            chat_id=c,
            member_ids=[p.accounts[i].user_id for i in plan.member_indices],
            klass="bulk",
            process=plan.process,
        )
        for c, plan in zip(p.chat_ids, p.plans, strict=True)
    ]
    if p.probe_chat is not None:
        chats.append(
            ChatEntry(p.probe_chat, [a.user_id for a in p.probes], klass="live", process=-1)
        )
    return Manifest(
        run_id=cfg.run_id,
        shard=cfg.shard,
        shards=cfg.shards,
        target=cfg.target,
        created_at_ms=time.time_ns() // 1_000_000,
        config=cfg.to_json(),
        chats=chats,
        accounts=len(p.accounts),
        probes=len(p.probes),
    )


def worker_configs(cfg: RunConfig, p: Provisioned) -> list[WorkerConfig]:
    out = []
    share = cfg.schedule.share(1 / cfg.processes)
    for i in range(cfg.processes):
        mine = [a for k, a in enumerate(p.accounts) if k % cfg.processes == i]
        chats = [
            (c, [p.accounts[m].user_id for m in plan.member_indices])
            for c, plan in zip(p.chat_ids, p.plans, strict=True)
            if plan.process == i
        ]
        out.append(
            WorkerConfig(
                index=i,
                run_id=cfg.run_id,
                shard=cfg.shard,
                target=cfg.target,
                transport=cfg.transport,
                schedule=share,
                accounts=mine,
                chats=chats,
                message_size=cfg.message_size,
                run_dir=cfg.run_dir(),
                seed=cfg.seed * 1000 + i,
                ack_timeout_s=cfg.ack_timeout_s,
                drain_s=cfg.drain_s,
            )
        )
    return out


def check_config(cfg: RunConfig) -> list[str]:
    """Problems that would make the run measure the generator instead of the system."""
    problems = []
    per_conn = cfg.rate / max(1, cfg.users)
    if cfg.transport == "ws" and per_conn > MAX_RATE_PER_CONNECTION:
        need = int(cfg.rate / MAX_RATE_PER_CONNECTION) + 1
        problems.append(
            f"{per_conn:.0f} msg/s per connection exceeds {MAX_RATE_PER_CONNECTION:.0f} "
            f"(the gateway closes floods with 1008): use --users >= {need}"
        )
    if cfg.users < cfg.processes:
        problems.append(f"--users {cfg.users} < --processes {cfg.processes}")
    if cfg.chats < cfg.processes:
        problems.append(f"--chats {cfg.chats} < --processes {cfg.processes}")
    return problems


class Run:
    """The parent side of one run (one shard)."""

    def __init__(self, cfg: RunConfig, settings: Settings) -> None:
        self.cfg = cfg
        self.settings = settings
        self.series = Series()
        self.problems: list[str] = []
        self.done: dict[int, dict[str, Any]] = {}
        self.ready: set[int] = set()
        self.redis: Any = None
        self.observer: RedisObserver | None = None
        self.redis_snapshots: dict[str, Any] = {}
        self.probes: Probes | None = None
        self.t0_wall = 0.0
        self._backlog: dict[str, int] = {}
        self._ctx = mp.get_context("spawn")
        self._out: Any = self._ctx.Queue()
        self._controls: list[Any] = []
        self._procs: list[Any] = []
        self._live_ms: list[float] = []
        self._cloudwatch: Any = None

    # ------------------------------------------------------------------ processes

    def _spawn(self, configs: list[WorkerConfig]) -> None:
        for wc in configs:
            control = self._ctx.Queue()
            proc = self._ctx.Process(
                target=worker_main, args=(wc, self._out, control), name=f"loadtest-{wc.index}"
            )
            proc.start()
            self._controls.append(control)
            self._procs.append(proc)

    def _broadcast(self, msg: tuple[Any, ...]) -> None:
        for c in self._controls:
            c.put(msg)

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind, index, payload = msg
        if kind == "second":
            self.series.add_stats("bulk", int(payload["sec"]), payload)
        elif kind == "ready":
            self.ready.add(index)
        elif kind == "done":
            self.done[index] = payload
        elif kind == "failed":
            self.problems.append(f"generator process {index} failed:\n{payload}")
            self.done[index] = {"failed": True}

    def _pump(self) -> None:
        while True:
            try:
                msg = self._out.get_nowait()
            except queue.Empty:
                break
            self._handle(msg)
        for i, proc in enumerate(self._procs):
            if i not in self.done and proc.exitcode not in (None, 0):
                self.problems.append(f"generator process {i} exited with {proc.exitcode}")
                self.done[i] = {"failed": True}

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.ready) < len(self._procs):
            self._pump()
            if len(self.done) == len(self._procs) or time.monotonic() > deadline:
                raise RuntimeError(
                    "generator processes did not get ready: " + "; ".join(self.problems)
                )
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ redis

    async def _open_redis(self) -> None:
        if not self.cfg.observe_redis:
            return
        from chat.redisconn import connect

        try:
            self.redis = connect(self.settings, max_connections=4)
            await self.redis.ping()
        except Exception as e:  # observing is optional: the run goes on without it
            log.warning("redis not observable (%s); no backlog or snapshots", e)
            self.redis = None
            return
        keyspace = KeySpace(self.settings.redis_key_prefix, self.settings.stream_partitions)
        self.observer = RedisObserver(self.redis, keyspace)

    async def _snapshot(self, name: str) -> None:
        if self.observer is None:
            return
        try:
            self.redis_snapshots[name] = await self.observer.snapshot()
        except Exception as e:
            log.warning("redis snapshot %s failed: %s", name, e)

    async def _sample_backlog(self, sec: int) -> None:
        if self.observer is None:
            return
        try:
            self._backlog = await self.observer.backlog()
        except Exception as e:
            log.debug("backlog sample failed: %s", e)
            return
        self.series.set_backlog(sec, self._backlog)

    async def _publish_live_latency(self, sec: int, encoded: str) -> None:
        """On AWS (CLOUDWATCH_NAMESPACE set): the probes' latency as the LiveLatency metric
        the dashboard and alarms read, every PUBLISH_EVERY_S."""
        namespace = self.settings.cloudwatch_namespace
        if not namespace:
            return
        h = histograms.decode(encoded)
        for item in h.get_recorded_iterator():
            self._live_ms += [item.value_iterated_to / 1000] * item.count_added_in_this_iter_step
        if sec % PUBLISH_EVERY_S or not self._live_ms:
            return
        samples, self._live_ms = self._live_ms, []
        try:
            if self._cloudwatch is None:
                import boto3

                self._cloudwatch = boto3.client("cloudwatch", region_name=self.settings.aws_region)
            await asyncio.to_thread(
                publish_live_latency, self._cloudwatch, namespace, "loadtest", samples
            )
        except Exception as e:  # metrics are a side channel: never stop the run for them
            log.warning("live latency publish failed: %s", e)

    # ------------------------------------------------------------------ main loop

    async def _tick(self, sec: int, progress: Progress) -> None:
        schedule = self.cfg.schedule
        self.series.set_target(sec, schedule.rate_at(sec + 0.5))
        if self.probes is not None:
            stats = self.probes.tracker.take_second()
            self.series.add_stats("live", sec, stats)
            self.probes.tracker.sweep(time.time_ns())
            await self._publish_live_latency(sec, stats["e2e"])
        await self._sample_backlog(sec)
        extra = {"run_id": self.cfg.run_id, "backlog": self._backlog or "-"}
        progress.update(self.series, sec, schedule.phase(sec), extra)

    async def _loop(self, t0_mono: float, progress: Progress) -> None:
        cfg = self.cfg
        deadline = t0_mono + cfg.schedule.duration_s + cfg.drain_s + 60
        sec = 0
        while len(self.done) < len(self._procs):
            await asyncio.sleep(max(0.0, min(0.1, t0_mono + sec + 1 - time.monotonic())))
            self._pump()
            if time.monotonic() >= t0_mono + sec + 1:
                await self._tick(sec, progress)
                sec += 1
            if time.monotonic() > deadline:
                self.problems.append("generator processes did not finish in time; aborted")
                self._broadcast(("stop",))
                break

    async def execute(self, progress: Progress) -> dict[str, Any]:
        cfg = self.cfg
        self.problems += check_config(cfg)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            api = Api(session, cfg.target)
            progress.log(
                f"provisioning {cfg.users} accounts, {cfg.chats} chats, {cfg.probes} probes…"
            )
            prov = await provision(api, cfg)
            write_manifest(cfg.run_dir(), build_manifest(cfg, prov))
            await self._open_redis()
            self._spawn(worker_configs(cfg, prov))
            try:
                if prov.probe_chat is not None:
                    writer = RecordWriter(cfg.run_dir(), f"{cfg.shard:03d}-probes")
                    self.probes = Probes(
                        session, cfg.target, prov.probes, prov.probe_chat, writer,
                        run_id=cfg.run_id, shard=cfg.shard, interval_s=cfg.probe_interval_s,
                        ack_timeout_s=cfg.ack_timeout_s,
                    )  # fmt: skip
                    await self.probes.open()
                await self._wait_ready()
                await self._run_measured(progress)
            finally:
                await self._shutdown()
        return self.results()

    async def _run_measured(self, progress: Progress) -> None:
        cfg = self.cfg
        self.t0_wall = cfg.start_at if cfg.start_at else time.time() + 1.0
        t0_mono = time.monotonic() + (self.t0_wall - time.time())
        self._broadcast(("start", self.t0_wall))
        await self._snapshot("start")
        progress.log(
            f"run {cfg.run_id}: {cfg.rate:g} msg/s, ramp {cfg.ramp_s:g}s, hold {cfg.hold_s:g}s, "
            f"{cfg.processes} process(es), {cfg.users} connections"
        )
        probe_task = None
        if self.probes is not None:
            probe_task = asyncio.create_task(self.probes.chat(t0_mono, cfg.schedule.duration_s))
        with progress:
            await self._loop(t0_mono, progress)
        if probe_task is not None and self.probes is not None:
            await probe_task
            await self.probes.drain(cfg.drain_s)
            self.series.add_stats(
                "live", int(time.monotonic() - t0_mono), self.probes.tracker.take_second()
            )
        await self._snapshot("end")

    async def _shutdown(self) -> None:
        if self.probes is not None:
            await self.probes.close()
        if len(self.done) < len(self._procs):
            self._broadcast(("stop",))
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
        if self.redis is not None:
            await self.redis.aclose()

    # ------------------------------------------------------------------ results

    def results(self) -> dict[str, Any]:
        cfg = self.cfg
        cpu_s = sum(float(d.get("cpu_s", 0.0)) for d in self.done.values())
        totals = self.series.totals()
        handled = totals["bulk"]["acked"]
        return {
            "version": 1,
            "run_id": cfg.run_id,
            "shard": cfg.shard,
            "shards": cfg.shards,
            "target": cfg.target,
            "t0_ms": int(self.t0_wall * 1000),
            "config": cfg.to_json(),
            "schedule": asdict(cfg.schedule),
            "series": self.series.to_json(),
            "totals": totals,
            "latency": self.series.latency(),
            "histograms": {
                k: histograms.encode(self.series.overall(k))
                for k in ("bulk_ack", "bulk_e2e", "live_ack", "live_e2e")
            },
            "generator": {
                "processes": cfg.processes,
                "cpu_s": round(cpu_s, 3),
                "acked_per_cpu_s": round(handled / cpu_s, 1) if cpu_s else None,
                "max_lag_ms": max((s.lag_ms for s in self.series.seconds.values()), default=0),
                "per_process": {str(k): v for k, v in sorted(self.done.items())},
            },
            "redis": self.redis_snapshots,
            "status": "ok" if not any("failed" in d for d in self.done.values()) else "failed",
            "problems": self.problems,
        }


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULTS
    path.write_bytes(msgspec.json.encode(results))
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.json.decode((run_dir / RESULTS).read_bytes())
    return data


async def run(cfg: RunConfig, settings: Settings) -> tuple[int, Path]:
    """Run one shard; returns (exit code, run directory)."""
    if not cfg.run_id:
        cfg = dataclasses.replace(cfg, run_id=new_run_id())
    progress = Progress(enabled=cfg.progress)
    results = await Run(cfg, settings).execute(progress)
    path = write_results(cfg.run_dir(), results)
    for line in summary_lines(results["latency"]):
        progress.log(line)
    for problem in results["problems"]:
        progress.log(f"[warning] {problem}")
    progress.log(f"results: {path}")
    if cfg.upload:
        from loadtest.aws import upload_run

        uri = upload_run(cfg.run_dir(), cfg.upload, cfg.run_id, cfg.shard, settings.aws_region)
        progress.log(f"uploaded to {uri}")
    acked = results["totals"]["bulk"]["acked"] + results["totals"]["live"]["acked"]
    ok = results["status"] == "ok" and acked > 0
    return (0 if ok else 1), cfg.run_dir()
