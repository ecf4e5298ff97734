"""JMeter results (CSV ``.jtl``): a summary and per-second series for the report, and the
send samples as records for verify.

The HTTP plan (``jmeter/http_plan.jmx``) saves, with ``-Jsample_variables=...`` (see
:data:`SAMPLE_VARIABLES`; ``loadtest.mk`` passes it), the chat, client_id and the ack's
id/seq/ts/priority extracted from each 202 response as extra CSV columns. A send sample
then carries everything a generator record does: send time = ``timeStamp``, ack time =
``timeStamp + elapsed`` (both ms).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtest import histograms
from loadtest.records import BULK, Record

#: The label of the message-sending sampler in both plans.
SEND_LABEL = "send message"
#: JMeter variables saved per sample (the `sample_variables` property).
SAMPLE_VARIABLES = ("chat_id", "client_id", "ack_id", "ack_seq", "ack_ts", "ack_prio")


def rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        yield from csv.DictReader(f)


def _ok(row: dict[str, str]) -> bool:
    return row.get("success", "").lower() == "true"


def to_record(row: dict[str, str]) -> Record | None:
    """A send sample as a record (None for other samplers or rows without a chat)."""
    if row.get("label") != SEND_LABEL or not row.get("chat_id", "").isdigit():
        return None
    start_ms = int(row["timeStamp"])
    end_ms = start_ms + int(row.get("elapsed") or 0)
    acked = _ok(row) and row.get("responseCode") == "202" and bool(row.get("ack_id"))
    return Record(
        client_id=row.get("client_id", ""),
        chat_id=int(row["chat_id"]),
        klass=BULK,
        send_ns=start_ms * 1_000_000,
        ack_ns=end_ms * 1_000_000 if acked else 0,
        id=row.get("ack_id", "") if acked else "",
        seq=int(row.get("ack_seq") or 0) if acked else 0,
        ts=int(row.get("ack_ts") or 0) if acked else 0,
        priority=row.get("ack_prio", "") if acked else "",
        deliver_ns=0,
        error="" if acked else f"http_{row.get('responseCode', '')}",
        resends=0,
    )


def records(path: Path) -> Iterator[Record]:
    for row in rows(path):
        rec = to_record(row)
        if rec is not None:
            yield rec


def chat_ids(path: Path) -> list[int]:
    return sorted({r.chat_id for r in records(path)})


def summarize(path: Path) -> dict[str, Any]:
    """Per-label totals and per-second series (count, errors, elapsed percentiles)."""
    labels: dict[str, dict[str, Any]] = {}
    per_sec: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"ok": 0, "errors": 0, "hist": histograms.LatencyBatch()}
    )
    codes: Counter[str] = Counter()
    t_min: int | None = None
    t_max = 0
    lab_hists: dict[str, histograms.LatencyBatch] = defaultdict(histograms.LatencyBatch)
    for row in rows(path):
        ts = int(row["timeStamp"])
        elapsed = int(row.get("elapsed") or 0)
        t_min = ts if t_min is None else min(t_min, ts)
        t_max = max(t_max, ts + elapsed)
        label = row.get("label", "")
        lab = labels.setdefault(label, {"count": 0, "errors": 0})
        lab["count"] += 1
        ok = _ok(row)
        if not ok:
            lab["errors"] += 1
            codes[row.get("responseCode", "")] += 1
        lab_hists[label].add(elapsed * 1000)
        if label == SEND_LABEL:
            bucket = per_sec[ts // 1000]
            bucket["ok" if ok else "errors"] += 1
            bucket["hist"].add(elapsed * 1000)
    return _finish(labels, lab_hists, per_sec, codes, t_min or 0, t_max)


def _finish(
    labels: dict[str, dict[str, Any]],
    lab_hists: dict[str, histograms.LatencyBatch],
    per_sec: dict[int, dict[str, Any]],
    codes: Counter[str],
    t_min: int,
    t_max: int,
) -> dict[str, Any]:
    duration_s = max(0.001, (t_max - t_min) / 1000)
    for label, lab in labels.items():
        h = histograms.new_histogram()
        lab_hists[label].drain_into(h)
        lab["latency"] = histograms.summary(h)
        lab["throughput"] = round(lab["count"] / duration_s, 2)
        lab["error_pct"] = round(100 * lab["errors"] / lab["count"], 3) if lab["count"] else 0
    series = []
    first = min(per_sec, default=0)
    for sec in sorted(per_sec):
        b = per_sec[sec]
        h = histograms.new_histogram()
        b["hist"].drain_into(h)
        s = histograms.summary(h)
        series.append(
            {
                "t": sec - first,
                "ok": b["ok"],
                "errors": b["errors"],
                "p50_ms": s.get("p50_ms", 0.0),
                "p99_ms": s.get("p99_ms", 0.0),
            }
        )
    return {
        "labels": labels,
        "series": series,
        "response_codes": dict(codes),
        "start_ms": t_min,
        "duration_s": round(duration_s, 3),
    }
