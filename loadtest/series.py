"""Per-second series of a run: counters and HDR histograms per second, bulk and live apart.

Each generator process (and the probes) reports one stats dict per second
(:meth:`loadtest.tracker.Tracker.take_second`); :class:`Series` sums the counters and
merges the histograms of every process, then of every ECS task when a distributed run is
gathered (aligned on the wall-clock start ``t0_ms``). Percentiles are computed from the
merged histograms only at the end, never averaged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest import histograms

#: (class, measurement) histograms kept per second.
HIST_KEYS = ("bulk_ack", "bulk_e2e", "live_ack", "live_e2e")
COUNTERS = ("sent", "acked", "delivered")


@dataclass
class Second:
    counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {"bulk": Counter(), "live": Counter()}
    )
    errors: Counter[str] = field(default_factory=Counter)
    hists: dict[str, HdrHistogram] = field(default_factory=dict)
    target: float = 0.0
    lag_ms: float = 0.0
    cpu_s: float = 0.0
    inflight: int = 0
    backlog: dict[str, int] = field(default_factory=dict)

    def hist(self, key: str) -> HdrHistogram:
        h = self.hists.get(key)
        if h is None:
            h = self.hists[key] = histograms.new_histogram()
        return h


class Series:
    def __init__(self) -> None:
        self.seconds: dict[int, Second] = {}

    def at(self, sec: int) -> Second:
        s = self.seconds.get(sec)
        if s is None:
            s = self.seconds[sec] = Second()
        return s

    def add_stats(self, klass: str, sec: int, stats: dict[str, Any]) -> None:
        """One process's (or the probes') counters for one second."""
        s = self.at(sec)
        for name in COUNTERS:
            s.counts[klass][name] += int(stats.get(name, 0))
        s.errors.update(stats.get("errors", {}))
        for kind in ("ack", "e2e"):
            encoded = stats.get(kind, "")
            if encoded:
                s.hist(f"{klass}_{kind}").decode_and_add(encoded.encode("ascii"))
        s.lag_ms = max(s.lag_ms, float(stats.get("lag_ms", 0.0)))
        s.cpu_s += float(stats.get("cpu_s", 0.0))
        s.inflight += int(stats.get("inflight", 0))

    def set_backlog(self, sec: int, backlog: dict[str, int]) -> None:
        self.at(sec).backlog = dict(backlog)

    def set_target(self, sec: int, rate: float) -> None:
        self.at(sec).target = rate

    # ------------------------------------------------------------------ summaries

    def overall(self, key: str) -> HdrHistogram:
        h = histograms.new_histogram()
        for s in self.seconds.values():
            if key in s.hists:
                h.add(s.hists[key])
        return h

    def totals(self) -> dict[str, Any]:
        counts: dict[str, Counter[str]] = {"bulk": Counter(), "live": Counter()}
        errors: Counter[str] = Counter()
        for s in self.seconds.values():
            for klass in counts:
                counts[klass].update(s.counts[klass])
            errors.update(s.errors)
        return {
            "bulk": {n: counts["bulk"][n] for n in COUNTERS},
            "live": {n: counts["live"][n] for n in COUNTERS},
            "errors": dict(errors),
        }

    def latency(self) -> dict[str, dict[str, dict[str, float]]]:
        return {
            klass: {
                kind: histograms.summary(self.overall(f"{klass}_{kind}")) for kind in ("ack", "e2e")
            }
            for klass in ("bulk", "live")
        }

    def last_complete(self, now_sec: int) -> Second | None:
        return self.seconds.get(now_sec - 1)

    # ------------------------------------------------------------------ (de)serialisation

    def to_json(self) -> list[dict[str, Any]]:
        rows = []
        for sec in sorted(self.seconds):
            s = self.seconds[sec]
            rows.append(
                {
                    "t": sec,
                    "target": round(s.target, 3),
                    "bulk": dict(s.counts["bulk"]),
                    "live": dict(s.counts["live"]),
                    "errors": dict(s.errors),
                    "hist": {k: histograms.encode(h) for k, h in s.hists.items()},
                    "lag_ms": round(s.lag_ms, 1),
                    "cpu_s": round(s.cpu_s, 4),
                    "inflight": s.inflight,
                    "backlog": s.backlog,
                }
            )
        return rows

    def merge_json(self, rows: list[dict[str, Any]], offset: int = 0) -> None:
        """Add another run's (shard's) series, its second ``t`` landing on ``t + offset``."""
        for row in rows:
            s = self.at(int(row["t"]) + offset)
            for klass in ("bulk", "live"):
                s.counts[klass].update(row.get(klass, {}))
            s.errors.update(row.get("errors", {}))
            for key, encoded in row.get("hist", {}).items():
                if encoded:
                    s.hist(key).decode_and_add(encoded.encode("ascii"))
            s.target += float(row.get("target", 0.0))
            s.lag_ms = max(s.lag_ms, float(row.get("lag_ms", 0.0)))
            s.cpu_s += float(row.get("cpu_s", 0.0))
            s.inflight += int(row.get("inflight", 0))
            if row.get("backlog") and not s.backlog:  # every shard sees the same Redis
                s.backlog = dict(row["backlog"])

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> Series:
        series = cls()
        series.merge_json(rows)
        return series
