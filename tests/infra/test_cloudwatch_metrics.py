"""chat.cloudwatch against moto: publishing and reading the stream-lag metric."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws

from chat.cloudwatch import (
    BULK_DB_SHARE,
    LIVE_LATENCY,
    SERVICE_DIMENSION,
    STREAM_LAG,
    STREAM_LAG_AGE,
    LagPublisher,
    publish_live_latency,
    publish_stream_lag,
    read_metric,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.client import CloudWatchClient

NAMESPACE = "ChatPlatform/test"


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudWatchClient]:
    """A CloudWatch client on moto, with fake credentials."""
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def window() -> tuple[datetime, datetime]:
    """Ten minutes either side of now."""
    now = datetime.now(UTC)
    return now - timedelta(minutes=10), now + timedelta(minutes=10)


def test_publish_stream_lag_puts_both_metrics_per_service(cloudwatch: CloudWatchClient) -> None:
    """Lag entries and oldest age are published with the Service dimension."""
    publish_stream_lag(cloudwatch, NAMESPACE, "worker", 1234, 2.5)
    metrics = cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]
    found = {(m["MetricName"], m["Dimensions"][0]["Value"]) for m in metrics}
    assert found == {(STREAM_LAG, "worker"), (STREAM_LAG_AGE, "worker")}
    assert all(m["Dimensions"][0]["Name"] == SERVICE_DIMENSION for m in metrics)


def test_read_metric_returns_what_was_published(cloudwatch: CloudWatchClient) -> None:
    """read_metric aggregates the published samples of one service, oldest first."""
    for lag in (100, 300):
        publish_stream_lag(cloudwatch, NAMESPACE, "priority", lag, 0.1)
    publish_stream_lag(cloudwatch, NAMESPACE, "worker", 99_999, 60.0)
    start, end = window()
    points = read_metric(
        cloudwatch,
        NAMESPACE,
        STREAM_LAG,
        {SERVICE_DIMENSION: "priority"},
        start,
        end,
        statistic="Maximum",
    )
    assert [p.value for p in points] == [300.0]
    average = read_metric(
        cloudwatch, NAMESPACE, STREAM_LAG, {SERVICE_DIMENSION: "priority"}, start, end
    )
    assert [p.value for p in average] == [200.0]


def test_read_metric_of_nothing_is_empty(cloudwatch: CloudWatchClient) -> None:
    """A metric nobody published reads as no datapoints, not an error."""
    start, end = window()
    assert (
        read_metric(cloudwatch, NAMESPACE, STREAM_LAG, {SERVICE_DIMENSION: "x"}, start, end) == []
    )


def test_publish_live_latency_sends_a_histogram(cloudwatch: CloudWatchClient) -> None:
    """Latency samples arrive as values with counts; the sample count is preserved."""
    publish_live_latency(cloudwatch, NAMESPACE, "loadtest", [10.2, 9.8, 250.0] + [5.0] * 200)
    start, end = window()
    points = read_metric(
        cloudwatch,
        NAMESPACE,
        LIVE_LATENCY,
        {SERVICE_DIMENSION: "loadtest"},
        start,
        end,
        statistic="SampleCount",
    )
    assert sum(p.value for p in points) == 203


async def test_lag_publisher_publishes_until_stopped(cloudwatch: CloudWatchClient) -> None:
    """run() probes and publishes each interval and returns promptly once stop is set."""
    stop = asyncio.Event()
    calls = 0

    async def probe() -> tuple[int, float]:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        return 10 * calls, 0.5

    publisher = LagPublisher(cloudwatch, NAMESPACE, "worker", probe, interval_s=0.01)
    await asyncio.wait_for(publisher.run(stop), timeout=5)
    assert (publisher.published, publisher.failed) == (3, 0)
    start, end = window()
    (point,) = read_metric(
        cloudwatch,
        NAMESPACE,
        STREAM_LAG,
        {SERVICE_DIMENSION: "worker"},
        start,
        end,
        statistic="Maximum",
    )
    assert point.value == 30.0


async def test_the_worker_publisher_adds_its_database_share(cloudwatch: CloudWatchClient) -> None:
    """With a share probe (the worker's DbShare) BulkDbShare is published beside the lag;
    without one (priority) it is not."""
    stop = asyncio.Event()

    async def probe() -> tuple[int, float]:
        stop.set()
        return 5, 0.1

    shares = iter([0.25])
    worker = LagPublisher(
        cloudwatch, NAMESPACE, "worker", probe, share=lambda: next(shares), interval_s=0.01
    )
    await asyncio.wait_for(worker.run(stop), timeout=5)
    stop.clear()
    priority = LagPublisher(cloudwatch, NAMESPACE, "priority", probe, interval_s=0.01)
    await asyncio.wait_for(priority.run(stop), timeout=5)
    start, end = window()
    (point,) = read_metric(
        cloudwatch, NAMESPACE, BULK_DB_SHARE, {SERVICE_DIMENSION: "worker"}, start, end
    )
    assert point.value == 0.25
    names = {
        (m["MetricName"], m["Dimensions"][0]["Value"])
        for m in cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]
    }
    assert (BULK_DB_SHARE, "priority") not in names
    assert (STREAM_LAG, "priority") in names


async def test_lag_publisher_survives_a_failing_probe(cloudwatch: CloudWatchClient) -> None:
    """A probe or CloudWatch error is counted and the publisher keeps going."""
    stop = asyncio.Event()
    calls = 0

    async def probe() -> tuple[int, float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis blip")
        stop.set()
        return 1, 0.0

    publisher = LagPublisher(cloudwatch, NAMESPACE, "priority", probe, interval_s=0.01)
    await asyncio.wait_for(publisher.run(stop), timeout=5)
    assert (publisher.published, publisher.failed) == (1, 1)
