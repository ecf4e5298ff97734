"""The AWS side with moto: ECS run_task per shard with the split rate, S3 upload and
gather/merge of the shards' results, CloudWatch GetMetricData for the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chat.cloudwatch import publish_stream_lag
from chat.config import load_settings
from loadtest.aws import gather_run, launch_from_args, upload_run
from loadtest.awsmetrics import fetch
from loadtest.cli import parser
from loadtest.manifest import Manifest, write_manifest
from loadtest.records import RecordWriter, iter_records
from loadtest.runner import read_results, write_results
from tests.loadtest.fixtures import results

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def test_aws_run_starts_one_task_per_shard(aws: None, tmp_path: Path) -> None:
    """aws-run calls run_task for each of N tasks from the stack's task definition, each
    with the same run id and t0, its shard i/N, rate R/N and the results bucket."""
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName="chat-lt")
    arn = ecs.register_task_definition(
        family="chat-lt-loadtest",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": "loadtest",
                "image": "loadtest:latest",
                "essential": True,
                "cpu": 1024,
                "memory": 2048,
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    private, public = (
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    )
    sg = ec2.create_security_group(GroupName="lt", Description="lt", VpcId=vpc)["GroupId"]
    outputs = {
        "url": "https://chat.example.test",
        "region": REGION,
        "cluster": "chat-lt",
        "bucket": "chat-lt-results",
        "loadtest": {
            "task_definition": arn,
            "subnets": [private],
            "public_subnets": [public],
            "security_group": sg,
        },
    }
    outputs_file = tmp_path / "outputs.json"
    outputs_file.write_text(json.dumps(outputs))
    args = parser().parse_args(
        [
            "aws-run",
            "--outputs-file",
            str(outputs_file),
            "--tasks",
            "3",
            "--rate",
            "300000",
            "--ramp",
            "300",
            "--hold",
            "900",
            "--users",
            "2000",
            "--chats",
            "2000",
            "--run-id",
            "run-x",
        ]
    )
    result = launch_from_args(args, load_settings({}))
    assert result["run_id"] == "run-x"
    assert len(result["tasks"]) == 3
    tasks = ecs.describe_tasks(cluster="chat-lt", tasks=result["tasks"])["tasks"]
    commands = [t["overrides"]["containerOverrides"][0]["command"] for t in tasks]
    assert {t["attachments"][0]["details"][0]["value"] for t in tasks} == {public}
    shards = sorted(c[c.index("--shard") + 1] for c in commands)
    assert shards == ["0/3", "1/3", "2/3"]
    for c in commands:
        assert c[:4] == ["python", "-m", "loadtest", "run"]
        assert c[c.index("--rate") + 1] == "100000.0"
        assert c[c.index("--run-id") + 1] == "run-x"
        assert c[c.index("--start-at") + 1] == f"{result['start_at']:.3f}"
        assert c[c.index("--upload") + 1] == "s3://chat-lt-results/loadtest"
        assert c[c.index("--target") + 1] == "https://chat.example.test"


def _shard_dir(root: Path, shard: int, t0_ms: int) -> Path:
    run_dir = root / f"task{shard}" / "run-y"
    write_results(run_dir, results("run-y", seconds=4, rate=50, shard=shard, shards=2, t0_ms=t0_ms))
    write_manifest(run_dir, Manifest("run-y", shard, 2, "http://gw", t0_ms, {}, [], 1, 0))
    writer = RecordWriter(run_dir, f"{shard:03d}-00")
    writer.add(f"c{shard}", 1 + shard, 0, 1, 2, f"id{shard}", 1, 1, "bulk", 3)
    writer.flush()
    return run_dir


def test_gather_merges_the_shards_from_s3(aws: None, tmp_path: Path) -> None:
    """Each task's upload lands under loadtest/<run>/shard-<i>/; gather downloads them
    and merges the series on the wall clock (the second shard started 1 s later) and the
    totals; records and manifests stay per shard for verify."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="results")
    for shard, t0 in ((0, 1_800_000_000_000), (1, 1_800_000_001_000)):
        uri = upload_run(
            _shard_dir(tmp_path, shard, t0), "s3://results/loadtest", "run-y", shard, REGION
        )
        assert uri == f"s3://results/loadtest/run-y/shard-{shard:03d}/"
    run_dir = gather_run("results", "loadtest", "run-y", tmp_path / "gathered", REGION)
    merged = read_results(run_dir)
    assert merged["shards"] == 2
    assert merged["status"] == "ok"
    assert merged["totals"]["bulk"]["sent"] == 2 * 4 * 50
    by_t = {row["t"]: row for row in merged["series"]}
    assert sorted(by_t) == [0, 1, 2, 3, 4]
    assert by_t[0]["bulk"]["sent"] == 50
    assert by_t[1]["bulk"]["sent"] == 100
    assert by_t[2]["target"] == 100.0
    assert merged["latency"]["bulk"]["ack"]["count"] == 2 * 4 * 51
    assert sorted(r.client_id for r in iter_records(run_dir)) == ["c0", "c1"]


def test_gather_reports_a_missing_shard(aws: None, tmp_path: Path) -> None:
    """A task that never uploaded makes the merged run fail, naming the shard."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="results")
    upload_run(
        _shard_dir(tmp_path, 0, 1_800_000_000_000), "s3://results/loadtest", "run-y", 0, REGION
    )
    merged = read_results(gather_run("results", "loadtest", "run-y", tmp_path / "g", REGION))
    assert merged["status"] == "failed"
    assert merged["missing_shards"] == [1]


def test_cloudwatch_metrics_of_the_run(aws: None) -> None:
    """GetMetricData returns the platform's stream lag as published by the consumers;
    queries the endpoint rejects are listed as errors, not raised."""
    cw = boto3.client("cloudwatch", region_name=REGION)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for i in range(3):
        publish_stream_lag(
            cw, "ChatLT", "worker", 100 * (i + 1), 1.5, timestamp=now - timedelta(minutes=3 - i)
        )
    outputs = {"cluster": "c", "services": {"gateway": {"name": "gw"}}}
    data = fetch(cw, outputs, "ChatLT", now - timedelta(minutes=10), now + timedelta(minutes=1))
    lag = next(m for m in data["metrics"] if m["id"] == "lag_worker")
    assert [p[1] for p in lag["points"]] == [100.0, 200.0, 300.0]
    assert lag["label"] == "worker stream lag"
    assert any(m["id"] == "cpu_gateway" for m in data["metrics"])
    assert all(isinstance(e, str) for e in data["errors"])
