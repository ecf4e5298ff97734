"""Recorded-run fixtures for the report and merge tests: results, verify and JMeter
files shaped exactly as the tools write them, built from known numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtest import histograms
from loadtest.runner import write_results
from loadtest.series import Series
from loadtest.verifyrun import write_verify

JTL_HEADER = (
    "timeStamp,elapsed,label,responseCode,responseMessage,threadName,dataType,success,bytes,"
    "grpThreads,allThreads,Latency,chat_id,client_id,ack_id,ack_seq,ack_ts,ack_prio"
)


def stats(
    sent: int, acked: int, ack_ms: list[float], e2e_ms: list[float], **extra: Any
) -> dict[str, Any]:
    ack, e2e = histograms.new_histogram(), histograms.new_histogram()
    for v in ack_ms:
        ack.record_value(int(v * 1000))
    for v in e2e_ms:
        e2e.record_value(int(v * 1000))
    return {
        "sent": sent,
        "acked": acked,
        "delivered": acked,
        "errors": extra.pop("errors", {}),
        "ack": histograms.encode(ack),
        "e2e": histograms.encode(e2e),
        **extra,
    }


def results(
    run_id: str = "fixture",
    seconds: int = 10,
    rate: int = 100,
    shard: int = 0,
    shards: int = 1,
    t0_ms: int = 1_800_000_000_000,
) -> dict[str, Any]:
    series = Series()
    for sec in range(seconds):
        errors = {"unavailable": 2} if sec == 5 else {}
        series.add_stats(
            "bulk",
            sec,
            stats(
                rate,
                rate - len(errors) * 2,
                [2.0] * 50 + [20.0],
                [9.0] * 50 + [90.0],
                errors=errors,
                cpu_s=0.2,
                lag_ms=1.0,
            ),
        )
        series.add_stats("live", sec, stats(2, 2, [1.0, 3.0], [5.0, 7.0]))
        series.set_target(sec, float(rate))
        series.set_backlog(sec, {"live": 0, "bulk": 10 * sec})
    return {
        "version": 1,
        "run_id": run_id,
        "shard": shard,
        "shards": shards,
        "target": "http://127.0.0.1:8080",
        "t0_ms": t0_ms,
        "config": {
            "rate": rate,
            "ramp_s": 2.0,
            "hold_s": 8.0,
            "start_rate": 0,
            "users": 10,
            "chats": 10,
            "chat_size": "2",
            "message_size": "64",
            "processes": 1,
            "transport": "ws",
            "probes": 2,
        },
        "schedule": {"rate": rate, "ramp_s": 2.0, "hold_s": 8.0, "start_rate": 0.0},
        "series": series.to_json(),
        "totals": series.totals(),
        "latency": series.latency(),
        "histograms": {
            k: histograms.encode(series.overall(k))
            for k in ("bulk_ack", "bulk_e2e", "live_ack", "live_e2e")
        },
        "generator": {
            "processes": 1,
            "cpu_s": 2.0,
            "acked_per_cpu_s": 480.0,
            "max_lag_ms": 1.0,
            "per_process": {},
        },
        "redis": {
            "start": {"info": {"redis_version": "7.0.15", "connected_clients": 3}, "streams": {}},
            "end": {
                "info": {"redis_version": "7.0.15", "connected_clients": 9},
                "streams": {
                    "chat:{0}:bulk": {
                        "stream": {"length": 4, "entries-added": 990},
                        "groups": [{"name": "worker", "pending": 4, "lag": 0, "consumers": 1}],
                    }
                },
            },
        },
        "status": "ok",
        "problems": [],
    }


def verify_result(verdict: str = "fail") -> dict[str, Any]:
    failed = verdict == "fail"
    return {
        "verdict": verdict,
        "source": "generator:fixture",
        "chats": 10,
        "counts": {
            "sent": 1000,
            "acked": 980,
            "persisted": 979 if failed else 980,
            "persisted_unacked": 0,
            "missing": 1 if failed else 0,
            "duplicated": 0,
            "live_demoted": 0,
            "resends": 3,
            "errors": {"unavailable": 20},
        },
        "violations": {"missing": 1 if failed else 0, "seq_gap": 1 if failed else 0},
        "examples": {"missing": ["id-42 acked at chat=3 seq=17"]} if failed else {},
        "latency": {
            "bulk": {"ack": {"count": 980.0, "p50_ms": 2.0, "p99_ms": 20.0, "max_ms": 20.0}}
        },
        "settle": {},
        "clock_skew_ms": 5,
        "seconds": 0.5,
    }


def write_jtl(path: Path, start_ms: int = 1_800_000_000_000, n: int = 30) -> Path:
    lines = [JTL_HEADER]
    lines.append(
        f"{start_ms},300,signup,201,Created,setup 1-1,text,true,300,1,1,300,"
        "null,null,null,null,null,null"
    )
    for i in range(n):
        t = start_ms + 1000 + i * 100
        ok = i != 7
        code = "202" if ok else "503"
        ack = f"id-{i},{i + 1},{t + 2},bulk" if ok else ",,,"
        lines.append(
            f"{t},{4 + i % 3},send message,{code},x,senders 1-1,text,{str(ok).lower()},"
            f"250,1,1,4,5,jm.x.1.{i},{ack}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_run(run_dir: Path, verdict: str | None = "fail") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_results(run_dir, results(run_dir.name))
    if verdict is not None:
        write_verify(run_dir, verify_result(verdict))
    return run_dir


def cloudwatch_data() -> dict[str, Any]:
    start = 1_800_000_000_000
    return {
        "region": "us-east-1",
        "start_ms": start,
        "errors": ["1 queries failed: SEARCH unsupported"],
        "metrics": [
            {
                "label": "worker stream lag",
                "stat": "Maximum",
                "unit": "entries",
                "id": "lag_worker",
                "points": [[start + 60_000 * i, float(i * 10)] for i in range(5)],
            }
        ],
    }


def load(path: Path) -> Any:
    return json.loads(path.read_text())
