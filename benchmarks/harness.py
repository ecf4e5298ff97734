"""What every benchmark module shares: CPU accounting, tables, and the result line.

A benchmark module ``bench_x`` has ``run() -> dict`` and, under ``__main__``, calls
:func:`main` with it: the figures are printed as a table for people and as one
``RESULT_PREFIX {json}`` line for the runner (:mod:`benchmarks.__main__`).

Rates are per core: the machine has 2 cores and the measuring process shares them with
the servers it talks to, so wall-clock rates mostly measure the machine. A process's
CPU seconds (``time.process_time``: every thread of the process, including ZeroMQ's I/O
thread) divided into the work done is what one core of that process can sustain.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class Meter:
    """Wall and process-CPU seconds of a measured region (``with Meter() as m``)."""

    wall: float = 0.0
    cpu: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def __enter__(self) -> Meter:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


def per_core(count: int, cpu_seconds: float) -> float:
    """Operations per CPU second (one core fully busy)."""
    return count / cpu_seconds if cpu_seconds > 0 else float("inf")


def table(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column text table."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * len(title)]
    for key, value in rows:
        shown = (
            f"{value:,.1f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value)
        )
        lines.append(f"  {key.ljust(width)}  {shown}")
    return "\n".join(lines)


def main(
    run: Callable[[], Mapping[str, Any]], tables: Callable[[Mapping[str, Any]], Iterable[str]]
) -> None:
    """Run a benchmark, print its tables and its result line."""
    result = run()
    for text in tables(result):
        print(text, end="\n\n", flush=True)
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    sys.exit(0)
