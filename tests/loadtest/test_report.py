"""The HTML report from recorded fixtures: one self-contained file with the plots, the
verdict, the Redis snapshot, JMeter results and CloudWatch metrics."""

from __future__ import annotations

import re
from pathlib import Path

from loadtest.report import build_report
from loadtest.svgplot import Line, line_chart, nice_ticks
from tests.loadtest.fixtures import cloudwatch_data, write_jtl, write_run


def test_report_has_plots_verdict_and_sections(tmp_path: Path) -> None:
    """A failed verification shows FAIL with its example; throughput, bulk and live
    latency, backlog, errors and generator charts are inline SVG with data; the Redis
    tables, JMeter summary and CloudWatch chart are present; nothing is fetched from
    the network."""
    run_dir = write_run(tmp_path / "run1", verdict="fail")
    jtl = write_jtl(tmp_path / "jm.jtl")
    path = build_report(run_dir, jtl=jtl, cloudwatch=cloudwatch_data())
    html = path.read_text()
    assert path == run_dir / "report.html"
    assert re.search(r'<span class="verdict fail" id="verdict">FAIL</span>', html)
    assert "id-42 acked at chat=3 seq=17" in html
    for title in (
        "Throughput (msg/s)",
        "Bulk latency percentiles (ms)",
        "Live latency percentiles (ms)",
        "Stream backlog",
        "Errors per second",
        "Generator: CPU",
        "JMeter send samples per second",
        "JMeter send latency (ms)",
        "worker stream lag",
    ):
        assert f'aria-label="{title}' in html, title
    assert "no data" not in html
    assert html.count("<svg") == 9
    assert re.search(r'<path d="M[\d.]+,[\d.]+(L[\d.]+,[\d.]+){5,}"', html), "lines carry points"
    assert "chat:{0}:bulk" in html
    assert "7.0.15" in html
    assert "send message" in html
    assert "503" in html
    assert "SEARCH unsupported" in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "self-contained"
    assert "<script" not in html


def test_report_of_a_passing_run_without_extras(tmp_path: Path) -> None:
    """A passing verdict shows PASS; without JMeter or AWS those sections say so."""
    run_dir = write_run(tmp_path / "run2", verdict="pass")
    html = build_report(run_dir, output=tmp_path / "out" / "r.html").read_text()
    assert '<span class="verdict pass" id="verdict">PASS</span>' in html
    assert "No JMeter results" in html
    assert "Not an AWS run" in html


def test_unverified_run_says_so(tmp_path: Path) -> None:
    """Without verify.json the verdict reads NOT VERIFIED."""
    html = build_report(write_run(tmp_path / "run3", verdict=None)).read_text()
    assert "NOT VERIFIED" in html


def test_chart_scales_and_gaps() -> None:
    """Ticks cover the data; None values break the line instead of dropping to zero."""
    assert nice_ticks(0, 5568) == [0, 2000, 4000, 6000]
    assert nice_ticks(0, 1)[-1] >= 1
    svg = line_chart("t", [Line("a", [0, 1, 2, 3], [1.0, None, 3.0, 4.0])])
    (d,) = re.findall(r'<path d="([^"]*)"', svg)
    assert d.count("M") == 2
    assert "no data" in line_chart("empty", [Line("a", [], [])])
