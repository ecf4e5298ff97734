"""Latency histograms: HdrHistogram in microseconds, recorded in batches.

``HdrHistogram.record_value`` costs ~3 µs in Python, more than the rest of a send. The
hot path therefore only appends the raw value to an ``array`` (~0.05 µs); once per
second :meth:`LatencyBatch.drain_into` quantises the batch to the histogram's own
precision (11 significant bits >= its 3 significant decimal digits), counts equal
values and records each distinct value once with its count. The result is the same
histogram for a fraction of the cost.

Histograms cross process and task boundaries encoded (``HdrHistogram.encode``: the
standard compressed base64 form, ~100 bytes to a few KB), so per-second histograms of
many processes and of many ECS tasks merge exactly; percentiles are never averaged.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

#: 1 µs .. 10 min, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 600_000_000
DIGITS = 3
#: Percentiles shown everywhere (report tables, progress, verify summary).
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: Kept bits when quantising: HdrHistogram with 3 digits keeps 2048 sub-buckets (11 bits).
_KEEP_BITS = 11


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def _quantise(value: int) -> int:
    shift = value.bit_length() - _KEEP_BITS
    if shift <= 0:
        return value
    return (value >> shift) << shift


class LatencyBatch:
    """Raw latencies (µs) collected on the hot path, recorded into a histogram later."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: array[int] = array("q")

    def add(self, micros: int) -> None:
        self.values.append(micros)

    def __len__(self) -> int:
        return len(self.values)

    def drain_into(self, histogram: HdrHistogram) -> None:
        """Record every collected value into ``histogram`` and empty the batch."""
        counts = Counter(_quantise(min(max(v, LOWEST_US), HIGHEST_US)) for v in self.values)
        for value, count in counts.items():
            histogram.record_value(value, count)
        self.values = array("q")


def encode(histogram: HdrHistogram) -> str:
    """The histogram as a compact ASCII string ("" when empty)."""
    if histogram.get_total_count() == 0:
        return ""
    data: bytes = histogram.encode()
    return data.decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    histogram = new_histogram()
    if encoded:
        histogram.decode_and_add(encoded.encode("ascii"))
    return histogram


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every encoded histogram given."""
    histogram = new_histogram()
    for item in encoded:
        if item:
            histogram.decode_and_add(item.encode("ascii"))
    return histogram


def summary(histogram: HdrHistogram) -> dict[str, float]:
    """count, min, mean, percentiles and max, in milliseconds (count as a number)."""
    count = histogram.get_total_count()
    out: dict[str, float] = {"count": float(count)}
    if count == 0:
        return out
    out["min_ms"] = histogram.get_min_value() / 1000
    out["mean_ms"] = round(histogram.get_mean_value() / 1000, 3)
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = histogram.get_value_at_percentile(p) / 1000
    out["max_ms"] = histogram.get_max_value() / 1000
    return out
