"""One generator process: its accounts' connections, an open-loop scheduler, records.

Started by :mod:`loadtest.runner` (``multiprocessing`` spawn, one per core asked for),
each process runs uvloop and owns a disjoint group of accounts and chats
(:func:`loadtest.provision.plan_chats`), so processes share nothing but the clock.

Protocol with the parent, over two queues::

    worker -> parent   ("ready", i, info)   connections open, waiting for the start time
                       ("second", i, stats) counters + histograms of one second
                       ("done", i, summary) after the drain; records flushed
                       ("failed", i, text)  an exception ended the process
    parent -> worker   ("start", t0)        wall-clock time of t = 0 (same for all shards)
                       ("stop",)            abort: stop sending, drain, report

Scheduling: every ``TICK_S`` the scheduler sends what :meth:`RateSchedule.due` says is
due by now, round-robin over (sender, chat) slots, so each member of a chat sends in turn
and each connection stays far below the gateway's per-connection flood limit. When a
tick finds more than ``max_burst`` messages due, the generator is behind: the rest is
sent on the next ticks and the delay is reported as ``lag_ms``, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.queues
import queue
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.connection import Connection, frame_parts, http_body
from loadtest.distributions import IntDistribution
from loadtest.provision import Account
from loadtest.records import BULK, RecordWriter
from loadtest.schedule import RateSchedule
from loadtest.tracker import Tracker, now_ns

log = logging.getLogger(__name__)

TICK_S = 0.005
#: Sizes drawn once and cycled: a random draw per message would cost more than the send.
SIZE_TABLE = 4096
CONNECT_CONCURRENCY = 64


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    run_id: str
    shard: int
    target: str
    transport: str  # "ws" or "http"
    schedule: RateSchedule  # this process's share
    accounts: list[Account]
    chats: list[tuple[int, list[int]]]  # (chat_id, member user ids), creator first
    message_size: str
    run_dir: Path
    seed: int
    ack_timeout_s: float = 30.0
    drain_s: float = 15.0
    max_burst: int = 5000
    http_inflight: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


class LoadWorker:
    def __init__(self, cfg: WorkerConfig, out: Any, control: Any) -> None:
        self.cfg = cfg
        self._out = out
        self._control = control
        name = f"{cfg.shard:03d}-{cfg.index:02d}"
        self.tracker = Tracker(
            RecordWriter(cfg.run_dir, name), BULK, ack_timeout_s=cfg.ack_timeout_s
        )
        self._prefix = f"{cfg.run_id[:8]}.{cfg.shard}.{cfg.index}."
        rng = random.Random(cfg.seed)
        sizes = IntDistribution.parse(cfg.message_size)
        self._sizes = [sizes.sample(rng) for _ in range(SIZE_TABLE)]
        self._padding = "x" * max([*self._sizes, 64])
        self.conns: dict[int, Connection] = {}
        self._slots: list[tuple[Connection, int]] = []
        self._issued = 0
        self._lag_ms = 0.0
        self._stop = asyncio.Event()
        self._abort = False
        self._http_inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ setup

    async def _connect_all(self, session: aiohttp.ClientSession) -> None:
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        conns = [Connection(session, self.cfg.target, a, self.tracker) for a in self.cfg.accounts]

        async def open_one(c: Connection) -> None:
            async with sem:
                await c.open()

        await asyncio.gather(*(open_one(c) for c in conns))
        self.conns = {c.user_id: c for c in conns}
        for chat_id, members in self.cfg.chats:
            for user_id in members:
                self._slots.append((self.conns[user_id], chat_id))
        random.Random(self.cfg.seed).shuffle(self._slots)

    # ------------------------------------------------------------------ sending

    def _next_message(self) -> tuple[Connection, int, str, str]:
        n = self._issued
        self._issued = n + 1
        conn, chat_id = self._slots[n % len(self._slots)]
        cid = f"{self._prefix}{n:x}"
        size = self._sizes[n % SIZE_TABLE]
        text = cid + " " + self._padding[: max(0, size - len(cid) - 1)]
        return conn, chat_id, cid, text

    async def _send_ws(self) -> None:
        conn, chat_id, cid, text = self._next_message()
        if not conn.connected:
            self.tracker.on_not_sent(cid, chat_id, "not_connected", now_ns())
            return
        frame = frame_parts(chat_id, cid, text)
        self.tracker.on_send(cid, chat_id, frame, conn, now_ns())
        # On failure it stays pending: resent with the same client_id after the reconnect.
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
            await conn.send(frame)

    def _send_http(self, session: aiohttp.ClientSession) -> None:
        conn, chat_id, cid, text = self._next_message()
        if self._http_inflight >= self.cfg.http_inflight:
            self.tracker.on_not_sent(cid, chat_id, "generator_overload", now_ns())
            return
        self.tracker.on_send(cid, chat_id, "", conn, now_ns())
        self._http_inflight += 1
        task = asyncio.create_task(self._post(session, conn, chat_id, cid, text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(
        self, session: aiohttp.ClientSession, conn: Connection, chat_id: int, cid: str, text: str
    ) -> None:
        url = f"{self.cfg.target}/api/v1/chats/{chat_id}/messages"
        headers = {"Authorization": f"Bearer {conn.account.token}"}
        try:
            async with session.post(url, json=http_body(cid, text), headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 202:
                    self.tracker.on_ack(
                        cid, body["id"], body["seq"], body["ts"], body["priority"], now_ns()
                    )
                else:
                    code = (body or {}).get("error", {}).get("code", f"http_{resp.status}")
                    self.tracker.on_error(cid, code, now_ns())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.tracker.on_error(cid, "disconnected", now_ns())
        finally:
            self._http_inflight -= 1

    async def _schedule(self, session: aiohttp.ClientSession, t0_mono: float) -> None:
        schedule = self.cfg.schedule
        http = self.cfg.transport == "http"
        while not self._abort:
            t = time.monotonic() - t0_mono
            due = int(schedule.due(t)) - self._issued  # due() stops growing at the end
            n = min(due, self.cfg.max_burst)
            for _ in range(n):
                if http:
                    self._send_http(session)
                else:
                    await self._send_ws()
            behind = due - n
            if t >= schedule.duration_s and behind <= 0:
                break
            rate = schedule.rate_at(t) or schedule.rate
            self._lag_ms = max(self._lag_ms, behind / rate * 1000 if rate > 0 else 0.0)
            await asyncio.sleep(TICK_S)

    # ------------------------------------------------------------------ reporting

    async def _report_seconds(self, t0_mono: float) -> None:
        sec = 0
        cpu = time.process_time()
        while True:
            await asyncio.sleep(max(0.0, t0_mono + sec + 1 - time.monotonic()))
            self.tracker.sweep(now_ns())
            self._poll_control()
            stats = self.tracker.take_second()
            now_cpu = time.process_time()
            stats["cpu_s"], cpu = now_cpu - cpu, now_cpu
            stats["lag_ms"], self._lag_ms = self._lag_ms, 0.0
            self._out.put(("second", self.cfg.index, {"sec": sec, **stats}))
            sec += 1
            if self._stop.is_set():
                return

    def _poll_control(self) -> None:
        try:
            msg = self._control.get_nowait()
        except queue.Empty:
            return
        if msg[0] == "stop":
            self._abort = True

    async def _wait_start(self) -> float:
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await loop.run_in_executor(None, self._control.get, True, 1.0)
            except queue.Empty:
                continue
            if msg[0] == "start":
                t0_wall: float = msg[1]
                return time.monotonic() + (t0_wall - time.time())
            if msg[0] == "stop":
                raise asyncio.CancelledError

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.cfg.drain_s
        while time.monotonic() < deadline:
            if not self.tracker.pending and not self.tracker.awaiting and not self._tasks:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=self.cfg.http_inflight, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await self._connect_all(session)
            readers = [asyncio.create_task(c.run(self._stop)) for c in self.conns.values()]
            self._out.put(("ready", self.cfg.index, {"connections": len(self.conns)}))
            t0 = await self._wait_start()
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            cpu_start = time.process_time()
            reporter = asyncio.create_task(self._report_seconds(t0))
            await self._schedule(session, t0)
            await self._drain()
            cpu_s = time.process_time() - cpu_start
            self.tracker.finish()
            self._stop.set()
            await reporter  # the last second carries the timeouts written by finish()
            for c in self.conns.values():
                await c.close()
            await asyncio.gather(*readers, return_exceptions=True)
        reconnects = sum(c.reconnects for c in self.conns.values())
        self._out.put(
            (
                "done",
                self.cfg.index,
                {
                    "cpu_s": cpu_s,
                    "issued": self._issued,
                    "records": self.tracker.writer.rows,
                    "reconnects": reconnects,
                    "totals": dict(self.tracker.totals),
                },
            )
        )


def worker_main(cfg: WorkerConfig, out: multiprocessing.queues.Queue[Any], control: Any) -> None:
    """Process entry point (spawned): uvloop, run, report a failure instead of hanging."""
    import uvloop

    logging.basicConfig(level=logging.WARNING)
    try:
        uvloop.run(LoadWorker(cfg, out, control).run())
    except BaseException:
        out.put(("failed", cfg.index, traceback.format_exc()))
        raise
