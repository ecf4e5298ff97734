"""Gateway benchmark: ingest (WS send -> ack) and delivery (fan-out -> WS frames) per
gateway core, and end-to-end latency of live messages while bulk is saturated.

Every phase runs real processes on a fresh local stack: ``redis-server``, SecantusDB (a
MongoDB-wire server, in its own process so it does not share this process's GIL), SQLite,
and ``python -m gateway`` (plus ``worker`` and ``priority`` for phase 3). The clients are
aiohttp WebSockets in this process. Gateway CPU is the gateway process's CPU seconds
(psutil) over the measured interval, so "per core" = work / gateway CPU seconds; the
machine has 2 cores shared by everything, so wall-clock rates are printed for context only.

1. **ingest**: loadtest accounts (bulk, no live budget) pipeline sends over many sockets,
   a window of un-acked frames each; counts acks.
2. **delivery**: this process publishes ``message`` frames on a ZeroMQ PUB socket
   connected to the gateway's SUB endpoint (exactly what a worker does); every frame
   goes to each of the chat's connected members; counts frames received.
3. **live under bulk saturation**: gateway + worker + priority. Pairs of human accounts
   chat live at LIVE_RATE msg/s each; latency = send -> ``message`` frame seen by the
   other member, one clock (this process), every sample kept (exact percentiles).
   First the idle baseline (no bulk traffic); then the bulk capacity is measured in
   the same run (a load generator offers CALIBRATE_RATE, more than the worker persists,
   and the worker group's acknowledged count gives the persisted rate); then the
   generator offers SATURATION_FACTOR x that capacity, so the bulk pipeline runs at its
   full capacity with a backlog that grows all through the window (backlog at start and
   end and the persisted rate are reported), while the same conversations are measured.
   The bulk generator is its own process (its event loop would otherwise delay the
   probes' frames here), at a lower CPU priority (it stands for load-generator hosts);
   the CPU of every process over the window is reported, since all of them share the
   machine's 2 cores. A stall monitor process records machine-wide stalls (a
   high-priority sleeper waking late), and samples spanning one are reported apart.
   The worker's database share (``chat.pressure``) is sampled through the window.

``BENCH_SCALE`` (default 1.0) scales the message counts and durations;
``python -m benchmarks.bench_gateway --live`` runs phase 3 alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import zmq
import zmq.asyncio
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import main, per_core, table
from chat.fanout import GatewayRegistry, topic
from chat.heartbeat import heartbeat_path
from chat.keys import KeySpace
from chat.localstack import EmbeddedRedis, LocalStack, free_port
from chat.serialization import MessageFrame, encode_frame
from chat.storage.mongo import COLLECTION

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
INGEST_MESSAGES = int(200_000 * SCALE)
INGEST_CONNECTIONS = 40
INGEST_WINDOW = 64
DELIVERY_MEMBERS = 100
DELIVERY_MESSAGES = int(3000 * SCALE)
DELIVERY_ROUND = 50
LIVE_SECONDS = 30 * SCALE  # the measured window under saturation
IDLE_SECONDS = 10 * SCALE  # the baseline, same conversations without bulk
LIVE_PAIRS = 3  # chats of two humans each
LIVE_RATE = 3.0  # msg/s per human, under LIVE_RATE_PER_S (5): stays in the live class
LIVE_GRACE_S = 5.0  # after the window, for the last frames to arrive
BULK_CONNECTIONS = 20
#: Offered while measuring the bulk capacity: above what the worker persists into
#: SecantusDB (~1.5-2k/s), so the figure is the pipeline's capacity, not the offer.
CALIBRATE_RATE = 3000
CALIBRATE_SECONDS = 10 * SCALE
#: Offered during the window, as a multiple of the measured capacity: enough for the
#: backlog to keep growing, not so much that the generator starves the 2 cores.
SATURATION_FACTOR = 2.5
WARMUP_S = 3.0  # after starting a generator, before measuring

_MONGO_SERVER = """
import sys, time
from secantus import SecantusDBServer
server = SecantusDBServer(storage_path=sys.argv[1])
server.start()
print(server.uri, flush=True)
sys.stdin.read()
server.stop()
"""


@contextlib.contextmanager
def stack(
    services: tuple[str, ...], **extra: str
) -> Iterator[tuple[LocalStack, str, dict[str, int]]]:
    """Redis + SecantusDB (own processes) + SQLite + the services, on free ports; yields
    the stack, the gateway's base URL and the pid of every server process by name."""
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        root = Path(tmp)
        redis = EmbeddedRedis(root / "redis", persistent=False)
        redis.start()
        mongo = subprocess.Popen(  # noqa: S603 - our interpreter, fixed script
            [sys.executable, "-c", _MONGO_SERVER, str(root / "mongo")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert mongo.stdout is not None
        port = free_port()
        env = {
            "REDIS_URL": redis.url,
            "MONGO_URL": mongo.stdout.readline().strip(),
            "GATEWAY_PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "WS_FLOOD_PER_S": "1000000",
            "WS_SEND_QUEUE": "100000",
            "BULK_SIGNUP_MAX": "1000",
            **extra,
        }
        local = LocalStack(
            local_dir=root / "local",
            env={**{k: v for k, v in os.environ.items() if k not in env}, **env},
            services=services,
            output=subprocess.DEVNULL,  # type: ignore[arg-type]
        )
        try:
            local.start_stores()
            local.migrate()
            local.start_services()
            local.wait_ready()
            assert redis.proc is not None
            pids = {name: proc.pid for name, proc in local.procs.items()}
            pids |= {"secantusdb": mongo.pid, "redis": redis.proc.pid, "probes": os.getpid()}
            yield local, f"http://127.0.0.1:{port}", pids
        finally:
            local.stop()
            if mongo.stdin:
                mongo.stdin.close()
            try:
                mongo.wait(20)
            except subprocess.TimeoutExpired:
                mongo.kill()
            redis.stop()


def gateway_cpu(local: LocalStack) -> float:
    t = psutil.Process(local.procs["gateway"].pid).cpu_times()
    return float(t.user + t.system)


async def provision(
    http: aiohttp.ClientSession, base: str, n: int, kind: str = "loadtest"
) -> list[dict[str, Any]]:
    tag = time.time_ns()
    accounts = [{"email": f"b{i}-{tag}@bench.test", "name": f"b{i}"} for i in range(n)]
    async with http.post(
        f"{base}/api/v1/auth/bulk-signup",
        json={"password": "benchmark pw", "kind": kind, "accounts": accounts},
    ) as resp:
        assert resp.status == 201, await resp.text()
        users: list[dict[str, Any]] = (await resp.json())["users"]
        return users


async def create_chat(
    http: aiohttp.ClientSession, base: str, owner: dict[str, Any], members: list[int]
) -> int:
    async with http.post(
        f"{base}/api/v1/chats",
        json={"title": "bench", "member_ids": members},
        headers={"Authorization": f"Bearer {owner['token']}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())["chat_id"])


@contextlib.asynccontextmanager
async def sockets(
    http: aiohttp.ClientSession, base: str, users: list[dict[str, Any]]
) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
    opened = []
    try:
        for u in users:
            ws = await http.ws_connect(f"{base}/ws?token={u['token']}", max_msg_size=0)
            await ws.receive()  # hello
            opened.append(ws)
        yield opened
    finally:
        for ws in opened:
            await ws.close()


# --------------------------------------------------------------------------- 1. ingest


async def ingest(local: LocalStack, base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        users = await provision(http, base, INGEST_CONNECTIONS)
        chats = [await create_chat(http, base, u, []) for u in users]
        per_conn = INGEST_MESSAGES // INGEST_CONNECTIONS
        async with sockets(http, base, users) as conns:

            async def drive(ws: aiohttp.ClientWebSocketResponse, chat_id: int) -> None:
                frames = [
                    f'{{"type":"send","chat_id":{chat_id},"client_id":"{i}","text":"bench {i}"}}'
                    for i in range(per_conn)
                ]
                sent = acked = 0
                while acked < per_conn:
                    while sent < per_conn and sent - acked < INGEST_WINDOW:
                        await ws.send_str(frames[sent])
                        sent += 1
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.TEXT, msg
                    assert msg.data.startswith('{"type":"ack"'), msg.data
                    acked += 1

            cpu0, wall0 = gateway_cpu(local), time.perf_counter()
            await asyncio.gather(*(drive(ws, c) for ws, c in zip(conns, chats, strict=True)))
            wall, cpu = time.perf_counter() - wall0, gateway_cpu(local) - cpu0
    total = per_conn * INGEST_CONNECTIONS
    return {
        "messages": total,
        "gateway_cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "acks_per_gateway_core_s": round(per_core(total, cpu)),
        "acks_per_wall_s": round(total / wall),
    }


# --------------------------------------------------------------------------- 2. delivery


async def delivery(local: LocalStack, base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        users = await provision(http, base, DELIVERY_MEMBERS)
        chat_id = await create_chat(http, base, users[0], [u["user_id"] for u in users[1:]])
        redis_url = local.resolved["REDIS_URL"]
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        (endpoint,) = await GatewayRegistry(client, KeySpace("", 16), 15).live()
        await client.aclose()
        ctx = zmq.asyncio.Context.instance()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 1_000_000)
        pub.connect(endpoint)
        frame = MessageFrame(
            id="01a2b3c4-0000-7000-8000-000000000000", chat_id=chat_id, seq=1,
            ts=int(time.time() * 1000), sender_id=users[0]["user_id"], sender_name="b0",
            text="a typical short chat message, about this long", attachments=[],
            priority="bulk",
        )  # fmt: skip
        payload = encode_frame(frame)
        received = 0
        async with sockets(http, base, users) as conns:
            # Slow joiner: probe until the first frame arrives on the first socket.
            while True:
                await pub.send_multipart([topic(chat_id), payload])
                with contextlib.suppress(TimeoutError):
                    await conns[0].receive(timeout=0.2)
                    break
            await asyncio.sleep(0.5)
            for ws in conns:  # drop probe leftovers
                with contextlib.suppress(TimeoutError):
                    while True:
                        await ws.receive(timeout=0.05)

            async def count(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
                nonlocal received
                for _ in range(n):
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.TEXT
                    received += 1

            cpu0, wall0 = gateway_cpu(local), time.perf_counter()
            for _ in range(DELIVERY_MESSAGES // DELIVERY_ROUND):
                for _ in range(DELIVERY_ROUND):
                    await pub.send_multipart([topic(chat_id), payload])
                await asyncio.gather(*(count(ws, DELIVERY_ROUND) for ws in conns))
            wall, cpu = time.perf_counter() - wall0, gateway_cpu(local) - cpu0
        pub.close(linger=0)
    return {
        "published": DELIVERY_MESSAGES // DELIVERY_ROUND * DELIVERY_ROUND,
        "members": DELIVERY_MEMBERS,
        "deliveries": received,
        "gateway_cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "deliveries_per_gateway_core_s": round(per_core(received, cpu)),
        "deliveries_per_wall_s": round(received / wall),
    }


# --------------------------------------------------------------------------- 3. live latency


async def signup_human(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, Any]:
    body = {"email": f"{name}-{time.time_ns()}@bench.test", "password": "benchmark pw",
            "name": name}  # fmt: skip
    async with http.post(f"{base}/api/v1/auth/signup", json=body) as resp:
        assert resp.status == 201, await resp.text()
        user: dict[str, Any] = await resp.json()
        return user


def percentiles(values: Sequence[float], unit: str = "ms") -> dict[str, Any]:
    """Exact nearest-rank percentiles of every sample, in ``unit``."""
    xs = sorted(values)
    assert xs, "no samples"

    def rank(p: float) -> float:
        return round(xs[max(0, math.ceil(p / 100 * len(xs)) - 1)], 1)

    return {
        "samples": len(xs),
        f"p50_{unit}": rank(50),
        f"p95_{unit}": rank(95),
        f"p99_{unit}": rank(99),
        f"max_{unit}": round(xs[-1], 1),
    }


@dataclass
class Person:
    user_id: int
    ws: aiohttp.ClientWebSocketResponse
    chat_id: int
    name: str


@dataclass
class Probe:
    """What one conversation run measured (every list in ms, one entry per message)."""

    latency: list[float] = field(default_factory=list)  # send -> `message` at the peer
    to_ack: list[float] = field(default_factory=list)  # send -> `ack` at the sender
    #: id of every message the peer received -> (send, seen by the peer), wall clock (s),
    #: to place the database's ``ts`` and ``persisted_at`` stamps between them
    wall: dict[str, tuple[float, float]] = field(default_factory=dict)
    lost: int = 0  # sent, never seen by the peer within the grace period
    started: float = 0.0  # wall clock of the run's start and end
    ended: float = 0.0


class Conversations:
    """Every person sends LIVE_RATE messages per second (random phase) to their chat;
    the other member's socket timestamps the ``message`` frame. One clock: this
    process's ``perf_counter``."""

    def __init__(self, people: Sequence[Person], label: str) -> None:
        self.people, self.label = people, label
        self.probe = Probe()
        self.sent: dict[str, float] = {}  # text -> send time, until the peer sees it
        self.sent_wall: dict[str, float] = {}  # text -> send time (wall clock)
        self.unacked: dict[str, float] = {}  # client_id -> send time, until acked
        self.stop = asyncio.Event()
        self.all_seen = asyncio.Event()

    async def run(self, seconds: float) -> Probe:
        self.probe.started = time.time()
        listeners = [asyncio.create_task(self._listen(p)) for p in self.people]
        speakers = [asyncio.create_task(self._speak(p)) for p in self.people]
        await asyncio.sleep(seconds)
        self.stop.set()
        await asyncio.gather(*speakers)
        if self.sent:  # the last ones arrive
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_seen.wait(), LIVE_GRACE_S)
        for t in listeners:
            t.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        self.probe.lost = len(self.sent)
        self.probe.ended = time.time()
        return self.probe

    async def _listen(self, me: Person) -> None:
        probe = self.probe
        async for msg in me.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            now = time.perf_counter()
            frame = json.loads(msg.data)
            if frame["type"] == "ack":
                t0 = self.unacked.pop(frame["client_id"], None)
                if t0 is not None:
                    probe.to_ack.append((now - t0) * 1000)
            elif frame["type"] == "message" and frame["sender_id"] != me.user_id:
                t0 = self.sent.pop(frame["text"], None)
                if t0 is not None:
                    probe.latency.append((now - t0) * 1000)
                    wall0 = self.sent_wall.pop(frame["text"])
                    probe.wall[frame["id"]] = (wall0, wall0 + now - t0)
                if self.stop.is_set() and not self.sent:
                    self.all_seen.set()

    async def _speak(self, me: Person) -> None:
        next_at = time.perf_counter() + random.random() / LIVE_RATE
        i = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if self.stop.is_set():
                return
            text = f"{self.label} {me.name} {i}"
            self.sent_wall[text] = time.time()
            self.sent[text] = self.unacked[text] = time.perf_counter()
            await me.ws.send_str(json.dumps(
                {"type": "send", "chat_id": me.chat_id, "client_id": text, "text": text}
            ))  # fmt: skip
            i += 1
            next_at += 1 / LIVE_RATE


def helper_process(flag: str) -> subprocess.Popen[str]:
    """This module run again as a helper process (``flag`` picks which), talking over
    its stdin and stdout, one line at a time."""
    return subprocess.Popen(  # noqa: S603 - our interpreter, this module, a fixed flag
        [sys.executable, "-m", "benchmarks.bench_gateway", flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


class Flood:
    """The bulk load generator in its own process (``python -m benchmarks.bench_gateway
    --flood``), so its event loop neither delays the live probes' frames in this one nor
    shares this process's GIL; its CPU is accounted separately."""

    def __init__(self, base: str, bots: Sequence[tuple[str, int]], rate: float, run: str):
        self.proc = helper_process("--flood")
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        config = {"base": base, "bots": list(bots), "rate": rate, "run": run}
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ready"
        self.rate = rate
        self.started = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """Stop sending; the generator's counters (sent, acked, busy cores)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return result


#: The generator's CPU priority (nice). In a real load test it runs on hosts of its own;
#: here it shares the 2 cores with the system under test, and at the default priority
#: its bursts (a 20 ms tick's worth of sends at once) take a core from whichever live
#: hop is due. At nice 10 it still gets every idle cycle (it needs ~0.1 core), and the
#: gateway, worker, priority, Redis and SecantusDB keep their own equal priorities.
FLOOD_NICE = 10


def flood_main() -> None:
    """The generator process: one JSON config line on stdin, ``ready`` on stdout once
    every socket is open, then sends at ``rate`` (over all sockets, in 20 ms ticks)
    until ``stop`` arrives on stdin; prints its counters as one JSON line."""
    os.nice(FLOOD_NICE)
    config = json.loads(sys.stdin.readline())
    asyncio.run(_flood(config["base"], config["bots"], float(config["rate"]), config["run"]))


async def _flood(base: str, bots: list[tuple[str, int]], rate: float, run: str) -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.run_in_executor(None, sys.stdin.readline)
    counts = {"sent": 0, "acked": 0}
    tick = 0.02
    async with aiohttp.ClientSession() as http:
        conns = [await http.ws_connect(f"{base}/ws?token={token}") for token, _ in bots]
        for ws in conns:
            await ws.receive()  # hello

        async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith('{"type":"ack"'):
                    counts["acked"] += 1

        readers = [asyncio.create_task(drain(ws)) for ws in conns]
        print("ready", flush=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        per_tick, owed, next_at, i = rate * tick, 0.0, time.perf_counter(), 0
        while not stopped.done():
            owed += per_tick
            while owed >= 1:
                ws, (_, chat) = conns[i % len(conns)], bots[i % len(conns)]
                await ws.send_str(
                    f'{{"type":"send","chat_id":{chat},"client_id":"{run}{i}","text":"bulk {i}"}}'
                )
                i, owed, counts["sent"] = i + 1, owed - 1, counts["sent"] + 1
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        for t in readers:
            t.cancel()
        for ws in conns:
            await ws.close()
    print(json.dumps({**counts, "cores_busy": round(cpu / wall, 2)}), flush=True)


#: A wake-up this much later than asked counts as a machine stall (StallMonitor).
STALL_MS = 20.0
#: The monitor's sleep between wake-ups.
STALL_TICK_S = 0.002


class StallMonitor:
    """Machine stalls, seen from outside the system under test: a process
    (``--stall-monitor``) at raised CPU priority that sleeps STALL_TICK_S at a time and
    records every wake-up more than STALL_MS late (wall clock start, ms). A high-priority
    sleeper on a machine with an idle core wakes on time unless the whole machine
    stopped (the VM's vCPUs descheduled by its host, the kernel busy), so each stall is
    one that every process of the stack suffered at once: live samples that span one are
    reported apart from the rest, never dropped."""

    def __init__(self) -> None:
        self.proc = helper_process("--stall-monitor")
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> list[tuple[float, float]]:
        """Every stall seen: (wall-clock start in s, duration in ms)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        rows = json.loads(self.proc.stdout.readline())
        stalls = [(float(start), float(ms)) for start, ms in rows]
        self.proc.wait(10)
        return stalls


def stall_monitor_main() -> None:
    """The monitor process: ``ready``, then watch until stdin says ``stop``; prints the
    stalls as one JSON list."""
    import select

    with contextlib.suppress(PermissionError):
        os.nice(-10)  # as root (the dev machine, CI); otherwise at the default priority
    print("ready", flush=True)
    stalls: list[tuple[float, float]] = []
    while True:
        t0 = time.perf_counter()
        readable, _, _ = select.select([sys.stdin], [], [], STALL_TICK_S)
        if readable:
            break
        late_ms = (time.perf_counter() - t0 - STALL_TICK_S) * 1000
        if late_ms > STALL_MS:
            stalls.append((time.time() - late_ms / 1000, round(late_ms, 1)))
    print(json.dumps(stalls), flush=True)


def split_by_stalls(probe: Probe, stalls: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """The window's stalls, and the percentiles of the samples clear of them (a sample
    spans a stall if its send..seen interval overlaps it)."""
    clear: list[float] = []
    hit = 0
    for sent, seen in probe.wall.values():
        if any(start < seen and start + ms / 1000 > sent for start, ms in stalls):
            hit += 1
        else:
            clear.append((seen - sent) * 1000)
    mine = [ms for start, ms in stalls if probe.started <= start <= probe.ended]
    out: dict[str, Any] = {
        "machine_stalls": f"{len(mine)} over {STALL_MS:.0f} ms"
        + (f", longest {max(mine):.0f} ms" if mine else ""),
        "samples_spanning_a_stall": hit,
    }
    if hit and clear:
        p = percentiles(clear)
        out["clear_of_stalls"] = f"p50 {p['p50_ms']} / p99 {p['p99_ms']} / max {p['max_ms']} ms"
    return out


def metrics_url(local: LocalStack, service: str) -> str:
    """A worker/priority process's /metrics (its health port is in its heartbeat file)."""
    beat = json.loads(heartbeat_path(local.resolved["LOCAL_DIR"], service).read_text())
    return f"http://127.0.0.1:{beat['health_port']}/metrics"


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, str | None], float]:
    """{(sample name, its ``priority`` or ``stage`` label): value} of one /metrics."""
    async with http.get(url) as resp:
        text = await resp.text()
    return {
        (s.name, s.labels.get("priority") or s.labels.get("stage")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "le" not in s.labels
    }


def mean_ms(a: Mapping[tuple[str, str | None], float], b: Mapping[Any, float], key: Any) -> float:
    """Mean of a histogram (name, label) between two scrapes, in ms."""
    name, label = key
    n = b.get((f"{name}_count", label), 0) - a.get((f"{name}_count", label), 0)
    total = b.get((f"{name}_sum", label), 0) - a.get((f"{name}_sum", label), 0)
    return round(total / n * 1000, 1) if n else 0.0


@dataclass
class BulkProgress:
    """Reads the bulk pipeline's progress: entries added to the bulk streams (XINFO
    STREAM ``entries-added``, unaffected by trimming) and the worker's own counters and
    batch size (its ``/metrics``; the port is in its heartbeat file)."""

    redis: Any
    http: aiohttp.ClientSession
    metrics_url: str
    #: the worker's metrics at the last sample
    last: Mapping[tuple[str, str | None], float] = field(default_factory=dict)

    @classmethod
    def of(cls, local: LocalStack, redis: Any, http: aiohttp.ClientSession) -> BulkProgress:
        return cls(redis, http, metrics_url(local, "worker"))

    async def sample(self) -> tuple[int, int, int]:
        """(bulk messages persisted, backlog = added - persisted, current batch size)."""
        values = await scrape(self.http, self.metrics_url)
        self.last = values
        persisted = int(values.get(("chat_persisted_total", "bulk"), 0))
        added = 0
        for part in KeySpace("", 16).all():
            if await self.redis.exists(part.bulk):
                added += int((await self.redis.xinfo_stream(part.bulk))["entries-added"])
        target = int(values.get(("chat_batch_target", "bulk"), 0))
        return persisted, added - persisted, target


class Cpu:
    """CPU seconds of every process of the stack over an interval (psutil)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start = self._sample()
        self.wall0 = time.perf_counter()

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            t = proc.cpu_times()
            out[name] = t.user + t.system
        return out

    def cores_busy(self) -> dict[str, float]:
        wall, end = time.perf_counter() - self.wall0, self._sample()
        return {k: round((end[k] - self.start[k]) / wall, 2) for k in end}


async def live_under_bulk(local: LocalStack, base: str, pids: Mapping[str, int]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(local.resolved["REDIS_URL"])
    async with aiohttp.ClientSession() as http:
        progress = BulkProgress.of(local, redis, http)
        bots = await provision(http, base, BULK_CONNECTIONS)
        bot_chats = [(b["token"], await create_chat(http, base, b, [])) for b in bots]
        humans = [await signup_human(http, base, f"h{i}") for i in range(2 * LIVE_PAIRS)]
        chats = [await create_chat(http, base, a, [b["user_id"]])
                 for a, b in zip(humans[::2], humans[1::2], strict=True)]  # fmt: skip
        async with sockets(http, base, humans) as conns:
            people = [
                Person(h["user_id"], ws, chats[i // 2], f"h{i}")
                for i, (h, ws) in enumerate(zip(humans, conns, strict=True))
            ]
            # ZeroMQ drops what is published before a new subscription reaches the
            # publisher (a client would `resume`): one unmeasured exchange first.
            await Conversations(people, "warm").run(2.0)
            monitor = StallMonitor()
            # 1. baseline: the same conversations, no bulk traffic
            idle = await Conversations(people, "idle").run(IDLE_SECONDS)
            # 2. bulk capacity: offer more than the worker persists, count what it persists
            flood = Flood(base, bot_chats, CALIBRATE_RATE, "c")
            await asyncio.sleep(WARMUP_S)
            (done0, cal0, _), t0 = await progress.sample(), time.perf_counter()
            await asyncio.sleep(CALIBRATE_SECONDS)
            done1, cal1, _ = await progress.sample()
            capacity = (done1 - done0) / (time.perf_counter() - t0)
            flood.stop()
            # 3. saturated: offer SATURATION_FACTOR x capacity; the same conversations
            rate = round(SATURATION_FACTOR * capacity)
            flood = Flood(base, bot_chats, rate, "s")
            await asyncio.sleep(WARMUP_S)
            (done0, backlog0, size0), t0 = await progress.sample(), time.perf_counter()
            yielded0 = progress.last.get(("chat_bulk_yielded_seconds_total", None), 0.0)
            live_url = metrics_url(local, "priority")
            live0 = await scrape(http, live_url)
            cpu = Cpu({**pids, "load generator": flood.proc.pid})
            sizes = asyncio.create_task(_sample_worker(progress, LIVE_SECONDS))
            busy = await Conversations(people, "busy").run(LIVE_SECONDS)
            done1, backlog1, _ = await progress.sample()
            live1 = await scrape(http, live_url)
            window = time.perf_counter() - t0
            yielded = progress.last.get(("chat_bulk_yielded_seconds_total", None), 0.0) - yielded0
            cores = cpu.cores_busy()
            generator = flood.stop()
            batch_sizes = await sizes
            stalls = monitor.stop()
    await redis.aclose()
    sizes_, shares = [n for n, _ in batch_sizes], [x for _, x in batch_sizes]
    idle_p, busy_p = percentiles(idle.latency), percentiles(busy.latency)
    return {
        "idle": {
            **idle_p,
            "lost": idle.lost,
            **split_by_stalls(idle, stalls),
            **await stages(local, idle),
        },
        "saturated": {
            **busy_p,
            "lost": busy.lost,
            **split_by_stalls(busy, stalls),
            **await stages(local, busy),
        },
        "p99_saturated_over_idle": round(busy_p["p99_ms"] / idle_p["p99_ms"], 1),
        "saturated_priority_means_ms": {  # the priority process's own histograms
            "insert": mean_ms(live0, live1, ("chat_stage_seconds", "store")),
            "accept_to_publish": mean_ms(live0, live1, ("chat_accept_to_publish_seconds", "live")),
        },
        "bulk": {
            "calibration_offered_per_s": CALIBRATE_RATE,
            "calibration_backlog": f"{cal0} -> {cal1}",
            "capacity_persisted_per_s": round(capacity),
            "offered_per_s": rate,
            "generator_acked": generator["acked"],
            "persisted_per_s": round((done1 - done0) / window),
            "backlog_start": backlog0,
            "backlog_end": backlog1,
            "worker_batch_size": f"{size0} at start, {min(sizes_)}..{max(sizes_)}",
            "worker_db_share": f"mean {sum(shares) / len(shares):.2f}, "
            f"{min(shares):.2f}..{max(shares):.2f}",
            "worker_yielded_s": round(yielded, 1),
            "window_s": round(window, 1),
        },
        "cores_busy": {**cores, "total": round(sum(cores.values()), 2)},
    }


async def _sample_worker(progress: BulkProgress, seconds: float) -> list[tuple[int, float]]:
    """The worker's adaptive batch size (chat_batch_target) and database share
    (chat_bulk_db_share), twice a second."""
    out: list[tuple[int, float]] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        size = (await progress.sample())[2]
        out.append((size, progress.last.get(("chat_bulk_db_share", None), 1.0)))
        await asyncio.sleep(0.5)
    return out


async def stages(local: LocalStack, probe: Probe) -> dict[str, Any]:
    """Where the time went, per stage: p50 / p99 of send -> ack at the sender (gateway and
    enqueue; this process's clock), and, from the stored document's stamps, of send ->
    accept (``ts``, Redis TIME), accept -> insert sent (``persisted_at``, the priority's
    clock as it builds the documents) and insert sent -> ``message`` seen by the peer
    (the insert itself, the fan-out and the gateway's delivery). All clocks are this
    machine's. ``slowest_1pct_ms``: the same stages, averaged over the slowest 1 % of the
    end-to-end samples, so the tail can be attributed."""
    rows = await stamped(local, probe)
    out: dict[str, Any] = {"send_to_ack": _p50_p99(probe.to_ack)}
    names = ("send_to_accept", "accept_to_insert", "insert_to_peer")
    for i, name in enumerate(names):
        out[name] = _p50_p99([r[i] for r in rows])
    slowest = sorted(rows, key=sum)[-max(1, len(rows) // 100) :]
    out["slowest_1pct_ms"] = ", ".join(
        f"{name} {sum(r[i] for r in slowest) / len(slowest):.1f}" for i, name in enumerate(names)
    )
    return out


def _p50_p99(values: Sequence[float]) -> str:
    p = percentiles(values)
    return f"p50 {p['p50_ms']} / p99 {p['p99_ms']} ms"


async def stamped(local: LocalStack, probe: Probe) -> list[tuple[float, float, float]]:
    """(send -> accept, accept -> insert sent, insert sent -> seen by the peer) in ms for
    every probed live message, from its stored ``ts`` and ``persisted_at``."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(local.resolved["MONGO_URL"])
    try:
        docs = client["chat"][COLLECTION].find(
            {"_id": {"$in": list(probe.wall)}}, {"ts": 1, "persisted_at": 1}
        )
        rows = []
        async for d in docs:
            sent, seen = probe.wall[d["_id"]]
            accepted = d["ts"].replace(tzinfo=UTC).timestamp()
            inserted = d["persisted_at"].replace(tzinfo=UTC).timestamp()
            rows.append(
                ((accepted - sent) * 1000, (inserted - accepted) * 1000, (seen - inserted) * 1000)
            )
        return rows
    finally:
        await client.close()


# --------------------------------------------------------------------------- runner


def run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with stack(("gateway",)) as (local, base, _):
        out["ingest"] = asyncio.run(ingest(local, base))
    with stack(("gateway",)) as (local, base, _):
        out["delivery"] = asyncio.run(delivery(local, base))
    with stack(("gateway", "worker", "priority")) as (local, base, pids):
        out["live_under_bulk"] = asyncio.run(live_under_bulk(local, base, pids))
    return out


def run_live() -> dict[str, Any]:
    """Phase 3 alone (``--live``)."""
    with stack(("gateway", "worker", "priority")) as (local, base, pids):
        return {"live_under_bulk": asyncio.run(live_under_bulk(local, base, pids))}


def flat(prefix: str, d: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            rows += flat(f"{prefix}{k}.", v)
        else:
            rows.append((prefix + k, v))
    return rows


def tables(r: Mapping[str, Any]) -> Iterable[str]:
    if "ingest" in r:
        yield table("Gateway ingest: WS send -> ack (bulk accounts, pipelined)",
                    list(r["ingest"].items()))  # fmt: skip
    if "delivery" in r:
        yield table("Gateway delivery: fan-out -> WS message frames", list(r["delivery"].items()))
    yield table("Live latency while bulk is saturated (send -> message frame at the peer)",
                flat("", r["live_under_bulk"]))  # fmt: skip


if __name__ == "__main__":
    if "--flood" in sys.argv:
        flood_main()
    elif "--stall-monitor" in sys.argv:
        stall_monitor_main()
    else:
        main(run_live if "--live" in sys.argv else run, tables)
