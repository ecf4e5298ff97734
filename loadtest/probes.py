"""Live probe users: a few human accounts that keep chatting while the flood runs.

They behave like people: one message every ``interval_s`` (jittered), well under the
live rate budget (DESIGN.md invariant 3: 5 msg/s sustained), from ``human`` accounts, so
the gateway classifies them ``live`` and the priority service drains them. Their ack and
end-to-end latencies are what a person would see during the test; they are recorded as
the ``live`` class, apart from the bulk load, in the same records and series.

They run in the parent process, whose event loop is otherwise idle (aggregation and the
progress display), so their measurements are not inflated by a saturated generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import aiohttp

from loadtest.connection import Connection, frame_parts
from loadtest.provision import Account
from loadtest.records import LIVE, RecordWriter
from loadtest.tracker import Tracker, now_ns

log = logging.getLogger(__name__)


class Probes:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: str,
        accounts: list[Account],
        chat_id: int,
        writer: RecordWriter,
        *,
        run_id: str,
        shard: int,
        interval_s: float = 1.0,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.tracker = Tracker(writer, LIVE, ack_timeout_s=ack_timeout_s)
        self.conns = [Connection(session, target, a, self.tracker) for a in accounts]
        self.chat_id = chat_id
        self.interval_s = interval_s
        self._prefix = f"{run_id[:8]}.{shard}.p"
        self._stop = asyncio.Event()
        self._sending = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await asyncio.gather(*(c.open() for c in self.conns))
        self._tasks = [asyncio.create_task(c.run(self._stop)) for c in self.conns]

    async def chat(self, t0_mono: float, duration_s: float) -> None:
        """Each probe sends until ``duration_s`` after ``t0_mono``."""
        await asyncio.gather(
            *(self._talk(i, c, t0_mono, duration_s) for i, c in enumerate(self.conns))
        )

    async def _talk(self, i: int, conn: Connection, t0_mono: float, duration_s: float) -> None:
        rng = random.Random(i)
        # Stagger the probes so their messages do not queue behind each other.
        next_at = t0_mono + self.interval_s * i / max(1, len(self.conns))
        n = 0
        while next_at - t0_mono < duration_s and not self._stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            cid = f"{self._prefix}{i}.{n:x}"
            text = f"{cid} probe {i} says hello #{n}"
            n += 1
            if conn.connected:
                frame = frame_parts(self.chat_id, cid, text)
                self.tracker.on_send(cid, self.chat_id, frame, conn, now_ns())
                # On failure it stays pending and is resent after the reconnect.
                with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                    await conn.send(frame)
            else:
                self.tracker.on_not_sent(cid, self.chat_id, "not_connected", now_ns())
            next_at += self.interval_s * rng.uniform(0.8, 1.2)

    async def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.tracker.pending and not self.tracker.awaiting:
                break
            await asyncio.sleep(0.05)  # polling: acks arrive on other tasks' connections
        self.tracker.finish()

    async def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            await c.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
