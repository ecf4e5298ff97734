"""Live pressure: the worker leaves the database to live inserts when they slow down.

Both consumer classes insert into one collection on one writer (SecantusDB locally, one
DocumentDB writer in AWS). The worker's limits (one insert in flight, inserts sized to a
time budget: :mod:`chat.consumer`) bound how long a live insert can wait behind bulk, but
while bulk is saturated the writer is busy *all* the time, so nearly every live insert
still lands behind a bulk one and shares the writer's CPU with it. This module closes
the loop on what live actually gets (DESIGN.md invariant 3)::

    priority: every insert's duration -> mean per interval -> Redis key (max over
              priority processes, expires after two intervals)
    worker:   reads the key every interval -> DbShare (AIMD) -> pauses between inserts

* :class:`InsertLatencyReporter` (priority) sums its insert durations and, every
  ``LIVE_PRESSURE_INTERVAL_MS`` in which it inserted anything, writes the mean with
  :data:`REPORT_LUA`: a value replaces the key only if it is larger or the key expired,
  so with many priority processes the key holds the worst recent mean. Nothing is
  written while there is no live traffic, and the key expires: no live traffic, no
  pressure.
* :class:`DbShare` (worker) is the fraction of wall time the process's inserts may keep
  the writer busy. After an insert that took ``d`` at share ``s`` the next one starts
  ``d * (1 - s) / s`` later at the earliest. Live mean over ``BULK_YIELD_TARGET_MS``:
  the share is multiplied by ``decrease`` (0.75, down to ``BULK_MIN_DB_SHARE``, so bulk
  always makes progress); at or under it: plus ``increase`` (0.05); no report: plus
  ``recover`` (0.1: live has gone quiet, bulk takes the writer back within seconds).
* :class:`PressureFollower` (worker) polls the key and feeds the share; it exports both
  as metrics (``chat_live_pressure_ms``, ``chat_bulk_db_share``).

Why a share rather than smaller inserts only: a live insert that arrives while bulk is
busy waits for the rest of that insert whatever its size; what lowers the *typical* wait
is how often the writer is idle when live arrives, i.e. the share. The insert budget
(:class:`chat.consumer.BatchSizer`) still bounds the worst case. Why a latency target
rather than a fixed share: against a writer with room to spare (a sized DocumentDB)
live inserts stay under the target and bulk keeps the whole writer; only a saturated
writer makes bulk step aside, and only as far as needed.

Costs: one script call per priority process and one GET per worker process per
interval (4 per second each at the default), on one key. A Redis outage leaves the key
unread: the share recovers to 1 (bulk is not throttled by a signal it cannot see; while
Redis is down nothing is enqueued anyway).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from chat import metrics
from chat.lifecycle import wait_stopped

log = logging.getLogger(__name__)

#: Keep the larger of the stored and the new value; either way the key lives at most
#: ARGV[2] ms past the last write that raised it. KEYS: the pressure key. ARGV: mean
#: ms, ttl ms. Returns 1 if the value was written.
REPORT_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: A report lives this many intervals: long enough for every worker to read it once,
#: short enough that the pressure ends soon after live traffic does.
TTL_INTERVALS = 2

#: The signal is best effort: any Redis failure (down, failing over, read-only replica)
#: skips one report or reading and is logged once per outage, never fatal to the service.
_REDIS_DOWN = (redis.exceptions.RedisError, OSError)


@dataclass(slots=True)
class _Outage:
    """Logs the start of a Redis outage once and its end once (not every interval)."""

    what: str
    down: bool = False

    def failed(self, error: BaseException) -> None:
        if not self.down:
            log.warning(f"live pressure {self.what}: redis down", extra={"error": repr(error)})
        self.down = True

    def ok(self) -> None:
        if self.down:
            log.info(f"live pressure {self.what} again")
        self.down = False


@dataclass(slots=True)
class DbShare:
    """AIMD control of the share of wall time one worker process's inserts may keep the
    database busy. Pure logic: the caller passes the times (any one monotonic clock).
    It is the worker's :class:`chat.consumer.InsertPacing`."""

    #: Live inserts slower than this on average (ms) make bulk step aside.
    target_ms: float
    #: The floor: bulk always gets at least this share (it must drain eventually).
    min_share: float
    #: Multiplicative decrease per report over target.
    decrease: float = 0.75
    #: Additive increase per report at or under target.
    increase: float = 0.05
    #: Additive increase per interval without any report (no live traffic).
    recover: float = 0.1
    share: float = 1.0
    #: Time before which the next insert should not start (the caller's clock).
    free_at: float = 0.0
    #: The last live mean seen (ms), None while no priority reports.
    live_ms: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.target_ms <= 0:
            raise ValueError("target_ms must be > 0")
        if not 0 < self.min_share <= 1:
            raise ValueError("min_share must be in (0, 1]")
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be in (0, 1)")

    def update(self, live_ms: float | None) -> float:
        """Take one reading of the live insert mean (None: nothing reported); the new
        share."""
        self.live_ms = live_ms
        if live_ms is None:
            self.share = min(1.0, self.share + self.recover)
        elif live_ms > self.target_ms:
            self.share = max(self.min_share, self.share * self.decrease)
        else:
            self.share = min(1.0, self.share + self.increase)
        return self.share

    def delay(self, now: float) -> float:
        """Seconds the next insert should wait (0: start now)."""
        return max(0.0, self.free_at - now)

    def inserted(self, started: float, ended: float) -> None:
        """An insert ran from ``started`` to ``ended``: hold the next one back so the
        database idles ``(1 - share) / share`` of that time."""
        share = self.share
        if share >= 1.0:
            self.free_at = ended
            return
        self.free_at = ended + (ended - started) * (1.0 - share) / share


class InsertLatencyReporter:
    """The priority side: collects insert durations, reports their mean every interval.
    It is the priority's :class:`chat.consumer.InsertPacing` (it never delays)."""

    def __init__(self, redis: Any, key: str, interval_s: float) -> None:
        self._script: Any = redis.register_script(REPORT_LUA)
        self._key = key
        self.interval_s = interval_s
        self._ttl_ms = max(1, round(interval_s * 1000 * TTL_INTERVALS))
        self._sum = 0.0
        self._count = 0
        self._outage = _Outage("not reported")
        #: reports written (that raised or refreshed the key) and attempted
        self.written = 0
        self.reports = 0

    def delay(self, now: float) -> float:
        """Live inserts never wait."""
        return 0.0

    def inserted(self, started: float, ended: float) -> None:
        """One insert's duration (the consumer calls this after every insert)."""
        self._sum += ended - started
        self._count += 1

    async def flush(self) -> float | None:
        """Report the mean of what was observed since the last flush (ms), if anything."""
        if not self._count:
            return None
        mean_ms = self._sum / self._count * 1000
        self._sum, self._count = 0.0, 0
        self.reports += 1
        try:
            args = [f"{mean_ms:.3f}", self._ttl_ms]
            self.written += int(await self._script(keys=[self._key], args=args))
        except _REDIS_DOWN as e:
            self._outage.failed(e)
            return mean_ms
        self._outage.ok()
        return mean_ms

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_stopped(stop, self.interval_s):
            await self.flush()


class PressureFollower:
    """The worker side: reads the key every interval into its :class:`DbShare`."""

    def __init__(self, redis: Any, key: str, interval_s: float, share: DbShare) -> None:
        self._redis = redis
        self._key = key
        self.interval_s = interval_s
        self.share = share
        self._outage = _Outage("not read")
        self._m_share = metrics.BULK_DB_SHARE
        self._m_live = metrics.LIVE_PRESSURE_MS
        self._m_share.set(share.share)

    async def read(self) -> float | None:
        """The current live insert mean (ms), None if no priority reported recently or
        Redis cannot be reached."""
        try:
            raw = await self._redis.get(self._key)
        except _REDIS_DOWN as e:
            self._outage.failed(e)
            return None
        self._outage.ok()
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            log.warning("live pressure key holds a non-number", extra={"key": self._key})
            return None

    async def step(self) -> float:
        """One reading applied to the share; the new share."""
        live_ms = await self.read()
        before = self.share.share
        share = self.share.update(live_ms)
        self._m_share.set(share)
        self._m_live.set(live_ms or 0.0)
        if (share < 1.0) != (before < 1.0):
            log.info(
                "bulk yielding to live" if share < 1.0 else "bulk has the database back",
                extra={"share": round(share, 3), "live_insert_ms": live_ms},
            )
        return share

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_stopped(stop, self.interval_s):
            await self.step()
