"""Rate limits: the live budget that classifies senders, and the per-connection flood gate.

Both are token buckets on the monotonic clock, kept per gateway process (a user's
connections are pinned to one gateway by the ALB's sticky cookie, so a per-process budget
is the per-user budget in practice; a user spread over N gateways gets N budgets, which
errs towards live, never towards loss).

* :class:`LiveBudget` (DESIGN.md invariant 3): a human's sends are live while their bucket
  (``LIVE_RATE_PER_S`` sustained, ``LIVE_BURST`` burst) has tokens, bulk after that. Bots
  and load-test accounts are bulk without consulting a bucket.
* :class:`FloodGate`: one per connection (and one per user for HTTP sends). A frame beyond
  the rate is refused with ``rate_limited``; a client that keeps going until the debt
  reaches one more burst is cut off (close 1008 on WebSocket, still 429 on HTTP).
"""

from __future__ import annotations

import enum
import time

from chat.serialization import Priority
from gateway.auth import Principal

#: Buckets kept before idle (full) ones are swept; bounds memory on a busy gateway.
MAX_BUDGETS = 100_000


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LiveBudget:
    """live | bulk for each send."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: dict[int, TokenBucket] = {}

    def classify(self, who: Principal, now: float | None = None) -> Priority:
        if not who.interactive:
            return "bulk"
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(who.user_id)
        if bucket is None:
            if len(self._buckets) >= MAX_BUDGETS:
                self._sweep(now)
            bucket = self._buckets[who.user_id] = TokenBucket(self._rate, self._burst, now)
        return "live" if bucket.take(now) else "bulk"

    def _sweep(self, now: float) -> None:
        """Forget buckets that refilled completely: recreating one is equivalent."""
        full = [u for u, b in self._buckets.items() if b.refill(now) >= b.burst]
        for user_id in full:
            del self._buckets[user_id]

    def __len__(self) -> int:
        return len(self._buckets)


class Verdict(enum.Enum):
    PASS = "pass"  # noqa: S105 - not a password
    REFUSE = "refuse"  # answer rate_limited, keep the connection
    CUT = "cut"  # flood: close 1008


class FloodGate:
    """Frames per second for one connection (or one HTTP sender)."""

    __slots__ = ("_bucket",)

    def __init__(self, rate_per_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._bucket = TokenBucket(rate_per_s, rate_per_s, now)

    def check(self, now: float) -> Verdict:
        bucket = self._bucket
        bucket.refill(now)
        # Refused frames cost a token too, so a client that ignores rate_limited runs
        # into debt and is cut off within about a second instead of being refused forever.
        bucket.tokens -= 1.0
        if bucket.tokens >= 0.0:
            return Verdict.PASS
        if bucket.tokens > -bucket.burst:
            return Verdict.REFUSE
        bucket.tokens = -bucket.burst  # bounded debt: an HTTP sender recovers within 2 s
        return Verdict.CUT


class SenderGates:
    """One :class:`FloodGate` per user for the HTTP send path (429 past the rate)."""

    def __init__(self, rate_per_s: float) -> None:
        self._rate = rate_per_s
        self._gates: dict[int, FloodGate] = {}

    def check(self, user_id: int, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        gate = self._gates.get(user_id)
        if gate is None:
            if len(self._gates) >= MAX_BUDGETS:
                self._gates.clear()  # worst case: every sender gets a fresh burst once
            gate = self._gates[user_id] = FloodGate(self._rate, now)
        return gate.check(now)
