"""Timestamps: integers of milliseconds since the Unix epoch, UTC, everywhere on the wire.

``ts`` is assigned by Redis ``TIME`` inside the enqueue script (one clock for the whole
platform, never the worker's), so these helpers only convert and measure.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """This process's wall clock in ms (for latency measurement, never for ``ts``)."""
    return time.time_ns() // 1_000_000


def ms_to_datetime(ms: int) -> datetime:
    """BSON dates hold ms; pymongo returns naive UTC datetimes unless tz_aware."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    """Inverse of :func:`ms_to_datetime`; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Integer arithmetic: float seconds * 1000 can round 1 ms off.
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)
