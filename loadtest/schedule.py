"""The open-loop rate schedule: a linear ramp, then a hold.

Open loop means the generator sends what the *schedule* says is due by now, whatever the
system's latency: a slow gateway makes acks late, it never makes the generator send less
(a closed loop would hide the very saturation the test is looking for). When the
generator itself cannot keep up, the shortfall is measured as ``lag`` and reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """``rate`` msg/s reached linearly from ``start_rate`` over ``ramp_s``, held ``hold_s``."""

    rate: float
    ramp_s: float
    hold_s: float
    start_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.rate < 0 or self.start_rate < 0 or self.ramp_s < 0 or self.hold_s < 0:
            raise ValueError("rate, start rate, ramp and hold must be >= 0")

    @property
    def duration_s(self) -> float:
        return self.ramp_s + self.hold_s

    def rate_at(self, t: float) -> float:
        """Target msg/s at ``t`` seconds after the start (0 outside the run)."""
        if t < 0 or t >= self.duration_s:
            return 0.0
        if t < self.ramp_s:
            return self.start_rate + (self.rate - self.start_rate) * t / self.ramp_s
        return self.rate

    def due(self, t: float) -> float:
        """Messages due by ``t``: the integral of :meth:`rate_at` from 0 to ``t``."""
        if t <= 0:
            return 0.0
        t = min(t, self.duration_s)
        if t <= self.ramp_s:
            slope = (self.rate - self.start_rate) / self.ramp_s
            return self.start_rate * t + slope * t * t / 2
        ramp_total = (self.start_rate + self.rate) * self.ramp_s / 2
        return ramp_total + self.rate * (t - self.ramp_s)

    @property
    def total(self) -> int:
        """Messages the whole run sends."""
        return math.floor(self.due(self.duration_s))

    def phase(self, t: float) -> str:
        if t < 0:
            return "starting"
        if t < self.ramp_s:
            return "ramp"
        if t < self.duration_s:
            return "hold"
        return "drain"

    def share(self, fraction: float) -> RateSchedule:
        """This schedule scaled to one shard's (or process's) part of the rate."""
        return RateSchedule(
            rate=self.rate * fraction,
            ramp_s=self.ramp_s,
            hold_s=self.hold_s,
            start_rate=self.start_rate * fraction,
        )
