"""CloudWatch metrics of an AWS run for the report (``report --cloudwatch``).

One ``GetMetricData`` call (up to 500 queries) over the run's window [t0 - 1 min,
end + 2 min] at 60 s resolution: the platform's own metrics (stream lag and age per
consumer service, live latency published by the probes; names from
:mod:`chat.cloudwatch`), ECS CPU/memory per service, and the ALB, DocumentDB and
ElastiCache tiers. Tiers whose ids the stack outputs give are queried by dimension, the
others with a SEARCH expression. GetMetricData rather than ``chat.cloudwatch.read_metric``
(GetMetricStatistics): one round trip for every series, SEARCH, and percentiles.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from chat.cloudwatch import LIVE_LATENCY, SERVICE_DIMENSION, STREAM_LAG, STREAM_LAG_AGE
from chat.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.client import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDataQueryTypeDef

log = logging.getLogger(__name__)

PERIOD_S = 60


def _stat(qid: str, label: str, namespace: str, metric: str, dims: dict[str, str], stat: str,
          unit: str = "") -> tuple[MetricDataQueryTypeDef, dict[str, str]]:  # fmt: skip
    query: MetricDataQueryTypeDef = {
        "Id": qid,
        "Label": label,
        "MetricStat": {
            "Metric": {
                "Namespace": namespace,
                "MetricName": metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
            },
            "Period": PERIOD_S,
            "Stat": stat,
        },
        "ReturnData": True,
    }
    return query, {"label": label, "stat": stat, "unit": unit}


def _search(
    qid: str, label: str, expression: str, unit: str = ""
) -> tuple[MetricDataQueryTypeDef, dict[str, str]]:
    query: MetricDataQueryTypeDef = {
        "Id": qid,
        "Label": label,
        "Expression": expression,
        "ReturnData": True,
    }
    return query, {"label": label, "stat": "search", "unit": unit}


def _search_metric(qid: str, label: str, schema: str, metric: str, stat: str,
                   unit: str = "") -> tuple[MetricDataQueryTypeDef, dict[str, str]]:  # fmt: skip
    expression = f"SEARCH('{{{schema}}} MetricName=\"{metric}\"', '{stat}', {PERIOD_S})"
    return _search(qid, label, expression, unit)


def queries(
    outputs: dict[str, Any], namespace: str | None
) -> list[tuple[MetricDataQueryTypeDef, dict[str, str]]]:
    out = []
    if namespace:
        for svc in ("worker", "priority"):
            dims = {SERVICE_DIMENSION: svc}
            out.append(
                _stat(
                    f"lag_{svc}",
                    f"{svc} stream lag",
                    namespace,
                    STREAM_LAG,
                    dims,
                    "Maximum",
                    "entries",
                )
            )
            out.append(
                _stat(
                    f"age_{svc}",
                    f"{svc} oldest entry age",
                    namespace,
                    STREAM_LAG_AGE,
                    dims,
                    "Maximum",
                    "s",
                )
            )
        dims = {SERVICE_DIMENSION: "loadtest"}
        out.append(
            _stat(
                "live_p99", "live latency p99 (probes)", namespace, LIVE_LATENCY, dims, "p99", "ms"
            )
        )
    cluster = outputs.get("cluster")
    for svc, info in sorted((outputs.get("services") or {}).items()):
        if cluster and info.get("name"):
            dims = {"ClusterName": cluster, "ServiceName": info["name"]}
            out.append(
                _stat(
                    f"cpu_{svc}", f"{svc} CPU %", "AWS/ECS", "CPUUtilization", dims, "Average", "%"
                )
            )
            out.append(
                _stat(
                    f"mem_{svc}",
                    f"{svc} memory %",
                    "AWS/ECS",
                    "MemoryUtilization",
                    dims,
                    "Average",
                    "%",
                )
            )
    alb = outputs.get("alb_arn_suffix")
    if alb:
        dims = {"LoadBalancer": alb}
        out.append(
            _stat(
                "alb_req", "ALB requests / min", "AWS/ApplicationELB", "RequestCount", dims, "Sum"
            )
        )
        out.append(
            _stat(
                "alb_5xx",
                "ALB target 5xx / min",
                "AWS/ApplicationELB",
                "HTTPCode_Target_5XX_Count",
                dims,
                "Sum",
            )
        )
    else:
        out.append(
            _search_metric("alb_req", "ALB requests / min", "AWS/ApplicationELB,LoadBalancer",
                           "RequestCount", "Sum")
        )  # fmt: skip
    docdb = outputs.get("documentdb_id")
    if docdb:
        dims = {"DBClusterIdentifier": docdb}
        out.append(
            _stat(
                "docdb_cpu", "DocumentDB CPU %", "AWS/DocDB", "CPUUtilization", dims, "Maximum", "%"
            )
        )
        out.append(
            _stat(
                "docdb_ins",
                "DocumentDB inserts / min",
                "AWS/DocDB",
                "OpcountersInsert",
                dims,
                "Sum",
            )
        )
    else:
        out.append(
            _search_metric("docdb_cpu", "DocumentDB CPU %", "AWS/DocDB,DBClusterIdentifier",
                           "CPUUtilization", "Maximum", "%")
        )  # fmt: skip
    out.append(
        _search_metric("redis_cpu", "Redis engine CPU %", "AWS/ElastiCache,CacheClusterId",
                       "EngineCPUUtilization", "Maximum", "%")
    )  # fmt: skip
    return out


def fetch(client: CloudWatchClient, outputs: dict[str, Any], namespace: str | None,
          start: datetime, end: datetime) -> dict[str, Any]:  # fmt: skip
    """Every series of :func:`queries`; a failing query group is reported, not raised."""
    result: dict[str, Any] = {
        "start_ms": int(start.timestamp() * 1000),
        "metrics": [],
        "errors": [],
    }
    specs = queries(outputs, namespace)
    # SEARCH expressions go in their own call: an endpoint (or moto) that rejects them
    # must not take the plain series down with it.
    for group in (
        [s for s in specs if "MetricStat" in s[0]],
        [s for s in specs if "Expression" in s[0]],
    ):
        if not group:
            continue
        meta = {q["Id"]: m for q, m in group}
        try:
            pages = client.get_paginator("get_metric_data").paginate(
                MetricDataQueries=[q for q, _ in group],
                StartTime=start,
                EndTime=end,
                ScanBy="TimestampAscending",
            )
            for page in pages:
                for r in page["MetricDataResults"]:
                    m = meta.get(
                        r["Id"], {"label": r.get("Label", r["Id"]), "stat": "", "unit": ""}
                    )
                    points = sorted(
                        [int(t.timestamp() * 1000), float(v)]
                        for t, v in zip(r["Timestamps"], r["Values"], strict=True)
                    )
                    result["metrics"].append({**m, "id": r["Id"], "points": points})
        except (ClientError, BotoCoreError) as e:
            result["errors"].append(f"{len(group)} queries failed: {e}")
    return result


def fetch_for_run(run_dir: Path, outputs: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from loadtest.runner import read_results

    results = read_results(run_dir)
    t0 = datetime.fromtimestamp(results["t0_ms"] / 1000, tz=UTC)
    last = max((row["t"] for row in results["series"]), default=0)
    region = outputs.get("region") or settings.aws_region
    client = boto3.client("cloudwatch", region_name=region)
    namespace = outputs.get("metrics_namespace") or settings.cloudwatch_namespace
    data = fetch(
        client, outputs, namespace, t0 - timedelta(minutes=1), t0 + timedelta(seconds=last + 120)
    )
    data["region"] = region
    return data
