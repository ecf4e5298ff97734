"""``python -m benchmarks [bench_x ...]``: run each benchmark module in its own process.

Each ``benchmarks/bench_*.py`` runs as ``python -m benchmarks.bench_x`` (a fresh
interpreter: no warm caches or leftover threads from another benchmark), its tables are
passed through, and its result dict is collected into ``<LOCAL_DIR>/bench/results.json``
(one key per benchmark). Exit status: non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import RESULT_PREFIX

HERE = Path(__file__).parent


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def run_one(name: str) -> dict[str, object] | None:
    """Run one module, echo its output, return its result dict (None if it failed)."""
    print(f"=== {name}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(  # noqa: S603 - our own modules, fixed interpreter
        [sys.executable, "-m", f"benchmarks.{name}"], stdout=subprocess.PIPE, text=True
    )
    result: dict[str, object] | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        else:
            print(line, end="", flush=True)
    code = proc.wait()
    print(f"=== {name}: exit {code} in {time.monotonic() - started:.1f}s\n", flush=True)
    return result if code == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules (default: all bench_*)")
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)} (have: {', '.join(discover())})")
    results = {name: run_one(name) for name in names}
    out = Path(os.environ.get("LOCAL_DIR") or ".local") / "bench" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update({k: v for k, v in results.items() if v is not None})
    out.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    print(f"results: {out}")
    failed = [k for k, v in results.items() if v is None]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
