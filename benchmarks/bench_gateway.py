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
3. **live under bulk saturation**: gateway + worker + priority; loadtest accounts flood
   bulk faster than the worker can persist (the bulk backlog grows all along), while
   two humans exchange live messages at 4/s; latency = send -> ``message`` frame back,
   one clock (this process).

``BENCH_SCALE`` (default 1.0) scales the message counts and durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

from benchmarks.harness import main, per_core, table
from chat.fanout import GatewayRegistry, topic
from chat.keys import KeySpace
from chat.localstack import EmbeddedRedis, LocalStack, free_port
from chat.serialization import MessageFrame, encode_frame

SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
INGEST_MESSAGES = int(200_000 * SCALE)
INGEST_CONNECTIONS = 40
INGEST_WINDOW = 64
DELIVERY_MEMBERS = 100
DELIVERY_MESSAGES = int(3000 * SCALE)
DELIVERY_ROUND = 50
LIVE_SECONDS = 30 * SCALE
LIVE_RATE = 4.0  # per human, under LIVE_RATE_PER_S (5): stays in the live class
BULK_RATE = 4000  # msg/s: above what the worker persists into SecantusDB (~2k/s)
BULK_CONNECTIONS = 20

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
def stack(services: tuple[str, ...], **extra: str) -> Iterator[tuple[LocalStack, str]]:
    """Redis + SecantusDB (own processes) + SQLite + the services, on free ports."""
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
            yield local, f"http://127.0.0.1:{port}"
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


class LiveRun:
    """Shared state of phase 3: the stop switch, the latency histogram, bulk acks."""

    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram

        self.stop = asyncio.Event()
        self.hist = HdrHistogram(1, 60_000, 3)
        self.bulk_acks = 0

    async def flood(self, ws: aiohttp.ClientWebSocketResponse, chat: int) -> None:
        """BULK_RATE / BULK_CONNECTIONS sends per second on this socket, acks counted."""

        async def drain() -> None:
            async for msg in ws:
                if msg.data.startswith('{"type":"ack"'):
                    self.bulk_acks += 1

        reader = asyncio.ensure_future(drain())
        interval, i, next_at = BULK_CONNECTIONS / BULK_RATE, 0, time.perf_counter()
        while not self.stop.is_set():
            await ws.send_str(
                f'{{"type":"send","chat_id":{chat},"client_id":"f{i}","text":"bulk {i}"}}'
            )
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        reader.cancel()

    async def talk(
        self,
        me: aiohttp.ClientWebSocketResponse,
        peer: aiohttp.ClientWebSocketResponse,
        chat_id: int,
        name: str,
    ) -> None:
        """LIVE_RATE sends per second from ``me``; latency until ``peer`` sees each."""
        pending: dict[str, float] = {}

        async def listen() -> None:
            async for msg in peer:
                if '"type":"message"' not in msg.data or f'"text":"{name} ' not in msg.data:
                    continue
                text = msg.data.split('"text":"', 1)[1].split('"', 1)[0]
                sent_at = pending.pop(text, None)
                if sent_at is not None:
                    ms = (time.perf_counter() - sent_at) * 1000
                    self.hist.record_value(max(1, round(ms)))

        listener = asyncio.ensure_future(listen())
        i = 0
        while not self.stop.is_set():
            text = f"{name} {i}"
            pending[text] = time.perf_counter()
            await me.send_str(
                f'{{"type":"send","chat_id":{chat_id},"client_id":"{text}","text":"{text}"}}'
            )
            i += 1
            await asyncio.sleep(1 / LIVE_RATE)
        await asyncio.sleep(2)  # the last ones arrive
        listener.cancel()


async def bulk_backlog(redis_url: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        return sum([int(await client.xlen(p.bulk)) for p in KeySpace("", 16).all()])
    finally:
        await client.aclose()


async def live_under_bulk(local: LocalStack, base: str) -> dict[str, Any]:
    run = LiveRun()
    async with aiohttp.ClientSession() as http:
        bots = await provision(http, base, BULK_CONNECTIONS)
        bot_chats = [await create_chat(http, base, b, []) for b in bots]
        humans = [await signup_human(http, base, n) for n in ("ann", "bob")]
        chat_id = await create_chat(http, base, humans[0], [humans[1]["user_id"]])
        async with sockets(http, base, bots) as floods, sockets(http, base, humans) as people:
            idle = LiveRun()  # baseline: the same conversation with no bulk traffic
            await asyncio.gather(
                idle.talk(people[0], people[1], chat_id, "ann0"),
                idle.talk(people[1], people[0], chat_id, "bob0"),
                _stop_after(idle.stop, LIVE_SECONDS / 3),
            )
            tasks = [asyncio.ensure_future(run.flood(ws, c))
                     for ws, c in zip(floods, bot_chats, strict=True)]  # fmt: skip
            await asyncio.sleep(3)  # the bulk backlog builds up first
            backlog0 = await bulk_backlog(local.resolved["REDIS_URL"])
            cpu0 = gateway_cpu(local)
            await asyncio.gather(
                run.talk(people[0], people[1], chat_id, "ann"),
                run.talk(people[1], people[0], chat_id, "bob"),
                _stop_after(run.stop, LIVE_SECONDS),
            )
            backlog1 = await bulk_backlog(local.resolved["REDIS_URL"])
            cpu = gateway_cpu(local) - cpu0
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    hist = run.hist
    return {
        "idle_samples": idle.hist.get_total_count(),
        "idle_p50_ms": idle.hist.get_value_at_percentile(50),
        "idle_p99_ms": idle.hist.get_value_at_percentile(99),
        "live_samples": hist.get_total_count(),
        "live_p50_ms": hist.get_value_at_percentile(50),
        "live_p99_ms": hist.get_value_at_percentile(99),
        "live_max_ms": hist.get_max_value(),
        "bulk_offered_per_s": BULK_RATE,
        "bulk_acked": run.bulk_acks,
        "bulk_backlog_start": backlog0,
        "bulk_backlog_end": backlog1,
        "gateway_cores_busy": round(cpu / (LIVE_SECONDS + 2), 2),
    }


async def _stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()


# --------------------------------------------------------------------------- runner


def run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with stack(("gateway",)) as (local, base):
        out["ingest"] = asyncio.run(ingest(local, base))
    with stack(("gateway",)) as (local, base):
        out["delivery"] = asyncio.run(delivery(local, base))
    with stack(("gateway", "worker", "priority")) as (local, base):
        out["live_under_bulk"] = asyncio.run(live_under_bulk(local, base))
    return out


def tables(r: Mapping[str, Any]) -> Iterable[str]:
    yield table("Gateway ingest: WS send -> ack (bulk accounts, pipelined)",
                list(r["ingest"].items()))  # fmt: skip
    yield table("Gateway delivery: fan-out -> WS message frames", list(r["delivery"].items()))
    yield table("Live latency while bulk is saturated (send -> message frame)",
                list(r["live_under_bulk"].items()))  # fmt: skip


if __name__ == "__main__":
    main(run, tables)
