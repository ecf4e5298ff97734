"""Distributed runs on AWS: N generator tasks on ECS, results through S3.

No coordination engine: ``aws-run`` calls ECS ``run_task`` once per task with the infra's
load-generator task definition, giving each task the same ``--run-id``, its
``--shard i/N``, ``--rate R/N`` and one wall-clock ``--start-at`` (a few minutes ahead,
so every task has provisioned its accounts and opened its connections before t = 0).
Each task uploads its run directory to ``s3://<bucket>/loadtest/<run-id>/shard-<i>/``;
``gather`` downloads every shard and merges the results (series aligned on t0,
histograms merged, never averaged). Verify and report then read the merged directory.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import msgspec

from chat.config import Settings
from loadtest import histograms
from loadtest.runner import RESULTS, new_run_id, write_results
from loadtest.series import Series

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient
    from mypy_boto3_ecs.type_defs import RunTaskRequestTypeDef

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "loadtest"
DEFAULT_CONTAINER = "loadtest"
#: Where the generator writes inside the container (LOCAL_DIR is writable by the app user).
TASK_OUT_DIR = ".local/loadtest"


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def shard_key(prefix: str, run_id: str, shard: int) -> str:
    return f"{prefix}/{run_id}/shard-{shard:03d}" if prefix else f"{run_id}/shard-{shard:03d}"


def upload_run(run_dir: Path, uri: str, run_id: str, shard: int, region: str) -> str:
    """Upload every file of the run directory under the shard's key; returns its URI."""
    bucket, prefix = split_s3(uri)
    s3 = boto3.client("s3", region_name=region)
    base = shard_key(prefix, run_id, shard)
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{base}/{path.relative_to(run_dir).as_posix()}")
    return f"s3://{bucket}/{base}/"


# --------------------------------------------------------------------------- launching


def task_command(args: argparse.Namespace, run_id: str, shard: int, tasks: int, start_at: float,
                 target: str, bucket: str) -> list[str]:  # fmt: skip
    profile = {
        "--rate": args.rate / tasks,
        "--start-rate": args.start_rate / tasks,
        "--ramp": args.ramp,
        "--hold": args.hold,
        "--users": args.users,
        "--chats": args.chats,
        "--chat-size": args.chat_size,
        "--message-size": args.message_size,
        "--processes": args.processes,
        "--transport": args.transport,
        "--probes": args.probes,
        "--probe-interval": args.probe_interval,
        "--ack-timeout": args.ack_timeout,
        "--drain": args.drain,
        "--seed": args.seed + shard,
    }
    argv = ["python", "-m", "loadtest", "run", "--run-id", run_id, "--shard", f"{shard}/{tasks}"]
    argv += ["--start-at", f"{start_at:.3f}", "--target", target, "--no-progress"]
    argv += ["--out-dir", TASK_OUT_DIR, "--upload", f"s3://{bucket}/{DEFAULT_PREFIX}"]
    for flag, value in profile.items():
        argv += [flag, str(value)]
    return argv


def launch(
    ecs: ECSClient,
    *,
    cluster: str,
    task_definition: str,
    container: str,
    subnets: list[str],
    security_groups: list[str],
    commands: list[list[str]],
    public_ip: bool,
) -> list[str]:
    """One run_task per shard (each has its own command); returns the task ARNs."""
    arns: list[str] = []
    for command in commands:
        request: RunTaskRequestTypeDef = {
            "cluster": cluster,
            "taskDefinition": task_definition,
            "count": 1,
            "launchType": "FARGATE",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": subnets,
                    "securityGroups": security_groups,
                    "assignPublicIp": "ENABLED" if public_ip else "DISABLED",
                }
            },
            "overrides": {"containerOverrides": [{"name": container, "command": command}]},
            "startedBy": "loadtest",
            "tags": [{"key": "loadtest-run", "value": command[command.index("--run-id") + 1]}],
        }
        resp = ecs.run_task(**request)
        if resp.get("failures"):
            raise RuntimeError(f"run_task failed: {resp['failures']}")
        arns += [t["taskArn"] for t in resp["tasks"]]
    return arns


def wait_stopped(ecs: ECSClient, cluster: str, arns: list[str], timeout_s: float) -> dict[str, Any]:
    """Poll until every task stopped; returns {arn: exit code or stop reason}."""
    deadline = time.monotonic() + timeout_s
    outcome: dict[str, Any] = {}
    while True:
        for i in range(0, len(arns), 100):  # describe_tasks takes 100 ARNs
            for t in ecs.describe_tasks(cluster=cluster, tasks=arns[i : i + 100])["tasks"]:
                if t.get("lastStatus") == "STOPPED":
                    codes = [c.get("exitCode") for c in t.get("containers", [])]
                    outcome[t["taskArn"]] = codes[0] if codes else t.get("stoppedReason")
        if len(outcome) == len(arns) or time.monotonic() > deadline:
            return outcome
        time.sleep(15)


def _setting(args: argparse.Namespace, outputs: dict[str, Any], flag: str, *path: str) -> Any:
    value = getattr(args, flag)
    if value:
        return value
    node: Any = outputs
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if node in (None, "", []):
        raise SystemExit(
            f"--{flag.replace('_', '-')} is required (no stack output {'.'.join(path)})"
        )
    return node


def _ids(value: Any) -> list[str]:
    return [v for v in value.split(",") if v] if isinstance(value, str) else list(value)


def launch_from_args(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from loadtest.stack import stack_outputs

    outputs = stack_outputs(args.stack, args.outputs_file)
    region = outputs.get("region") or settings.aws_region
    cluster = _setting(args, outputs, "cluster", "cluster")
    task_def = _setting(args, outputs, "task_definition", "loadtest", "task_definition")
    bucket = _setting(args, outputs, "bucket", "bucket")
    target = _setting(args, outputs, "target", "url")
    lt = outputs.get("loadtest", {})
    public = not args.subnets and bool(lt.get("public_subnets"))
    subnets = _ids(args.subnets or lt.get("public_subnets") or lt.get("subnets") or "")
    groups = _ids(args.security_groups or lt.get("security_group") or "")
    if not subnets or not groups:
        raise SystemExit("--subnets and --security-groups are required (no stack outputs)")
    run_id = args.run_id or new_run_id()
    start_at = time.time() + args.start_delay
    commands = [
        task_command(args, run_id, i, args.tasks, start_at, target, bucket)
        for i in range(args.tasks)
    ]
    ecs = boto3.client("ecs", region_name=region)
    arns = launch(
        ecs,
        cluster=cluster,
        task_definition=task_def,
        container=args.container or DEFAULT_CONTAINER,
        subnets=subnets,
        security_groups=groups,
        commands=commands,
        public_ip=public,
    )
    result: dict[str, Any] = {"run_id": run_id, "start_at": start_at, "tasks": arns, "ok": True}
    log.info("launched %d tasks for run %s, t0 in %.0f s", len(arns), run_id, args.start_delay)
    if args.wait:
        limit = args.start_delay + args.ramp + args.hold + args.drain + 900
        stopped = wait_stopped(ecs, cluster, arns, limit)
        result["exit_codes"] = stopped
        result["ok"] = len(stopped) == len(arns) and all(c == 0 for c in stopped.values())
        result["run_dir"] = str(gather_run(bucket, DEFAULT_PREFIX, run_id, args.out_dir, region))
    return result


# --------------------------------------------------------------------------- gathering


def gather_run(bucket: str, prefix: str, run_id: str, out_dir: Path, region: str) -> Path:
    """Download every shard of the run and write the merged ``results.json``."""
    s3 = boto3.client("s3", region_name=region)
    run_dir = out_dir / run_id
    base = f"{prefix}/{run_id}/" if prefix else f"{run_id}/"
    paginator = s3.get_paginator("list_objects_v2")
    count = 0
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            dest = run_dir / obj["Key"][len(base) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(dest))
            count += 1
    if count == 0:
        raise SystemExit(f"nothing under s3://{bucket}/{base}")
    shards = [
        msgspec.json.decode((d / RESULTS).read_bytes())
        for d in sorted(run_dir.glob("shard-*"))
        if (d / RESULTS).exists()
    ]
    write_results(run_dir, merge_results(shards))
    return run_dir


def merge_results(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from every shard's (see :mod:`loadtest.series`)."""
    if not shards:
        raise ValueError("no shard results to merge")
    shards = sorted(shards, key=lambda r: r["shard"])
    t0 = min(r["t0_ms"] for r in shards)
    series = Series()
    for r in shards:
        series.merge_json(r["series"], offset=round((r["t0_ms"] - t0) / 1000))
    first = shards[0]
    missing = sorted(set(range(first["shards"])) - {r["shard"] for r in shards})
    cpu_s = sum(r["generator"]["cpu_s"] for r in shards)
    totals = series.totals()
    config = dict(first["config"])
    for key in ("rate", "start_rate", "users", "chats"):
        config[key] = sum(r["config"].get(key, 0) for r in shards)
    schedule = dict(first["schedule"])
    schedule["rate"] = sum(r["schedule"]["rate"] for r in shards)
    schedule["start_rate"] = sum(r["schedule"].get("start_rate", 0) for r in shards)
    return {
        **first,
        "shard": -1,
        "shards": len(shards),
        "t0_ms": t0,
        "config": config,
        "schedule": schedule,
        "series": series.to_json(),
        "totals": totals,
        "latency": series.latency(),
        "histograms": {
            k: histograms.encode(histograms.merge(r["histograms"].get(k, "") for r in shards))
            for k in first["histograms"]
        },
        "generator": {
            "processes": sum(r["generator"]["processes"] for r in shards),
            "cpu_s": round(cpu_s, 3),
            "acked_per_cpu_s": round(totals["bulk"]["acked"] / cpu_s, 1) if cpu_s else None,
            "max_lag_ms": max(r["generator"]["max_lag_ms"] for r in shards),
            "per_shard": {str(r["shard"]): r["generator"] for r in shards},
        },
        "redis": next((r["redis"] for r in shards if r.get("redis")), {}),
        "status": "ok" if all(r["status"] == "ok" for r in shards) and not missing else "failed",
        "problems": [f"shard {r['shard']}: {p}" for r in shards for p in r["problems"]]
        + [f"shard {i}: no results uploaded" for i in missing],
        "missing_shards": missing,
    }
