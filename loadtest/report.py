"""``python -m loadtest report``: one self-contained HTML file (inline SVG, inline CSS).

Reads the run directory: ``results.json`` (generator series), ``verify.json`` (the
verdict), an optional JMeter ``.jtl`` and ``cloudwatch.json`` (AWS metrics fetched by
``report --cloudwatch``). Any of them may be missing; the report says so instead of
failing, so a JMeter-only run or an unverified run still gets a report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from loadtest import jtl as jtl_mod
from loadtest.redisinfo import INFO_HIGHLIGHTS
from loadtest.series import Second, Series
from loadtest.svgplot import Line, line_chart
from loadtest.verifyrun import load_verify

REPORT = "report.html"
CLOUDWATCH = "cloudwatch.json"
TEMPLATE = "report.html.j2"


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("loadtest", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def _pct(s: Second, key: str, p: float) -> float | None:
    h = s.hists.get(key)
    if h is None or h.get_total_count() == 0:
        return None
    return float(h.get_value_at_percentile(p)) / 1000


def pct(key: str, p: float) -> Callable[[Second], float | None]:
    def get(s: Second) -> float | None:
        return _pct(s, key, p)

    return get


def error_rate(code: str) -> Callable[[Second], float | None]:
    def get(s: Second) -> float | None:
        return float(s.errors.get(code, 0))

    return get


def _column(
    series: Series, fn: Callable[[Second], float | None]
) -> tuple[list[float], list[float | None]]:
    secs = sorted(series.seconds)
    return [float(s) for s in secs], [fn(series.seconds[s]) for s in secs]


def _line(
    series: Series, name: str, fn: Callable[[Second], float | None], dashed: bool = False
) -> Line:
    xs, ys = _column(series, fn)
    return Line(name, xs, ys, dashed)


def generator_charts(series: Series) -> list[str]:
    charts = [
        line_chart(
            "Throughput (msg/s)",
            [
                _line(series, "target", lambda s: s.target, dashed=True),
                _line(series, "sent", lambda s: s.counts["bulk"]["sent"]),
                _line(series, "acked", lambda s: s.counts["bulk"]["acked"]),
                _line(series, "delivered", lambda s: s.counts["bulk"]["delivered"]),
            ],
            y_label="msg/s",
        )
    ]
    for klass in ("bulk", "live"):
        charts.append(
            line_chart(
                f"{klass.capitalize()} latency percentiles (ms)",
                [
                    _line(series, "ack p50", pct(f"{klass}_ack", 50)),
                    _line(series, "ack p99", pct(f"{klass}_ack", 99)),
                    _line(series, "e2e p50", pct(f"{klass}_e2e", 50)),
                    _line(series, "e2e p99", pct(f"{klass}_e2e", 99)),
                    _line(series, "e2e p99.9", pct(f"{klass}_e2e", 99.9), True),
                ],
                y_label="ms",
            )
        )
    charts.append(
        line_chart(
            "Stream backlog (entries not yet acknowledged by the consumer groups)",
            [
                _line(series, "bulk", lambda s: s.backlog.get("bulk") if s.backlog else None),
                _line(series, "live", lambda s: s.backlog.get("live") if s.backlog else None),
            ],
            y_label="entries",
        )
    )
    codes = sorted({c for s in series.seconds.values() for c in s.errors})
    charts.append(
        line_chart(
            "Errors per second",
            [_line(series, "all", lambda s: float(sum(s.errors.values())))]
            + [_line(series, c, error_rate(c)) for c in codes[:5]],
            y_label="errors/s",
        )
    )
    charts.append(
        line_chart(
            "Generator: CPU (cores) and scheduling lag (s)",
            [
                _line(series, "cpu cores", lambda s: s.cpu_s),
                _line(series, "lag s", lambda s: s.lag_ms / 1000),
            ],
        )
    )
    return charts


def jmeter_section(path: Path) -> dict[str, Any]:
    summary = jtl_mod.summarize(path)
    xs = [float(r["t"]) for r in summary["series"]]
    charts = [
        line_chart(
            "JMeter send samples per second",
            [
                Line("ok", xs, [float(r["ok"]) for r in summary["series"]]),
                Line("errors", xs, [float(r["errors"]) for r in summary["series"]]),
            ],
            y_label="samples/s",
        ),
        line_chart(
            "JMeter send latency (ms)",
            [
                Line("p50", xs, [r["p50_ms"] for r in summary["series"]]),
                Line("p99", xs, [r["p99_ms"] for r in summary["series"]]),
            ],
            y_label="ms",
        ),
    ]
    return {"path": str(path), "summary": summary, "charts": charts}


def cloudwatch_section(data: dict[str, Any]) -> dict[str, Any]:
    charts = []
    for metric in data.get("metrics", []):
        points = metric.get("points", [])
        t0 = data.get("start_ms", points[0][0] if points else 0)
        xs = [(p[0] - t0) / 1000 for p in points]
        ys: list[float | None] = [float(p[1]) for p in points]
        charts.append(
            line_chart(
                metric["label"],
                [Line(metric.get("stat", ""), xs, ys)],
                y_label=metric.get("unit", ""),
            )
        )
    return {"charts": charts, "errors": data.get("errors", []), "region": data.get("region", "")}


def redis_section(snapshots: dict[str, Any]) -> dict[str, Any]:
    info_rows = []
    for key in INFO_HIGHLIGHTS:
        values = [snapshots.get(name, {}).get("info", {}).get(key, "") for name in ("start", "end")]
        if any(v != "" for v in values):
            info_rows.append([key, *values])
    streams = []
    for name, entry in sorted(snapshots.get("end", {}).get("streams", {}).items()):
        info = entry.get("stream", {})
        for g in entry.get("groups", []) or [{}]:
            streams.append(
                {
                    "stream": name,
                    "length": info.get("length", ""),
                    "added": info.get("entries-added", ""),
                    "group": g.get("name", ""),
                    "consumers": g.get("consumers", ""),
                    "pending": g.get("pending", ""),
                    "lag": g.get("lag", ""),
                }
            )
    return {"info": info_rows, "streams": streams, "present": bool(snapshots)}


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def build_report(
    run_dir: Path,
    *,
    output: Path | None = None,
    jtl: Path | None = None,
    cloudwatch: dict[str, Any] | None = None,
) -> Path:
    """Render the report; returns its path."""
    from loadtest.runner import RESULTS

    results = _load_json(run_dir / RESULTS)
    verify = load_verify(run_dir)
    if cloudwatch is None:
        cloudwatch = _load_json(run_dir / CLOUDWATCH)
    else:
        (run_dir / CLOUDWATCH).write_text(json.dumps(cloudwatch))
    series = Series.from_json(results["series"]) if results else Series()
    context = {
        "run_id": (results or {}).get("run_id") or run_dir.name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "results": results,
        "verify": verify,
        "charts": generator_charts(series) if results else [],
        "redis": redis_section((results or {}).get("redis") or {}),
        "jmeter": jmeter_section(jtl) if jtl is not None and jtl.exists() else None,
        "cloudwatch": cloudwatch_section(cloudwatch) if cloudwatch else None,
    }
    html = _env().get_template(TEMPLATE).render(**context)
    path = output or run_dir / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
