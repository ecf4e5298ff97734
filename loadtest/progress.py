"""The live progress display of ``run``: a rich table refreshed twice a second on a
terminal, one plain line every few seconds otherwise (CI logs, ``make`` output)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtest import histograms
from loadtest.series import Second, Series

PLAIN_EVERY_S = 5.0


def _p(second: Second | None, key: str, pct: float) -> str:
    if second is None or key not in second.hists or second.hists[key].get_total_count() == 0:
        return "-"
    return f"{second.hists[key].get_value_at_percentile(pct) / 1000:.1f}"


def _rate(second: Second | None, klass: str, name: str) -> int:
    return 0 if second is None else second.counts[klass][name]


class Progress:
    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self.enabled = enabled
        self._live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> Progress:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def log(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def update(self, series: Series, sec: int, phase: str, extra: dict[str, Any]) -> None:
        last = series.last_complete(sec)
        if self._live is not None:
            self._live.update(self._table(series, sec, phase, last, extra))
        elif self.enabled and time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            self.console.print(self._line(sec, phase, last, extra), highlight=False)
            sys.stderr.flush()

    @staticmethod
    def _line(sec: int, phase: str, last: Second | None, extra: dict[str, Any]) -> str:
        return (
            f"t={sec:>4}s {phase:<5} target={last.target if last else 0:>8.0f}/s "
            f"sent={_rate(last, 'bulk', 'sent'):>7}/s acked={_rate(last, 'bulk', 'acked'):>7}/s "
            f"ack p99={_p(last, 'bulk_ack', 99)}ms e2e p99={_p(last, 'bulk_e2e', 99)}ms "
            f"live e2e p99={_p(last, 'live_e2e', 99)}ms backlog={extra.get('backlog', '-')} "
            f"errors={sum(last.errors.values()) if last else 0} "
            f"lag={last.lag_ms if last else 0:.0f}ms"
        )

    @staticmethod
    def _table(
        series: Series, sec: int, phase: str, last: Second | None, extra: dict[str, Any]
    ) -> Table:
        totals = series.totals()
        table = Table(title=f"loadtest {extra.get('run_id', '')}  t={sec}s  {phase}")
        for col in ("", "target/s", "sent/s", "acked/s", "delivered/s", "ack p50/p99 ms",
                    "e2e p50/p99 ms", "total acked"):  # fmt: skip
            table.add_column(col, justify="right")
        for klass in ("bulk", "live"):
            table.add_row(
                klass,
                f"{last.target:.0f}" if last and klass == "bulk" else "",
                str(_rate(last, klass, "sent")),
                str(_rate(last, klass, "acked")),
                str(_rate(last, klass, "delivered")),
                f"{_p(last, f'{klass}_ack', 50)} / {_p(last, f'{klass}_ack', 99)}",
                f"{_p(last, f'{klass}_e2e', 50)} / {_p(last, f'{klass}_e2e', 99)}",
                str(totals[klass]["acked"]),
            )
        errors = ", ".join(f"{k}={v}" for k, v in sorted(totals["errors"].items())) or "none"
        cpu = f"{last.cpu_s * 100:.0f}%" if last else "-"
        table.caption = (
            f"errors: {errors} | backlog: {extra.get('backlog', '-')} | generator cpu: {cpu} "
            f"| lag: {last.lag_ms if last else 0:.0f} ms "
            f"| in flight: {last.inflight if last else 0}"
        )
        return table


def summary_lines(latency: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = []
    for klass, kinds in latency.items():
        for kind, s in kinds.items():
            if s.get("count"):
                pct = " ".join(
                    f"p{p:g}={s.get(f'p{p:g}_ms', 0):.1f}" for p in histograms.PERCENTILES
                )
                lines.append(
                    f"{klass:>4} {kind:<4} n={int(s['count'])} {pct} max={s['max_ms']:.1f} ms"
                )
    return lines
