"""CloudWatch metrics the AWS deployment scales and alarms on.

The worker and priority services publish their stream lag here (the worker also its
database share, :mod:`chat.pressure`); the autoscaling
policies of infra/components/scaling.py and the dashboard of
infra/components/observability.py read the same names, so a metric or dimension
renamed here must be renamed there too (they import these constants).

Every call is a plain boto3 call. ``LagPublisher`` runs them through
``asyncio.to_thread`` so a slow CloudWatch endpoint never blocks a consumer's loop,
and a failed publish is logged and counted, never raised: losing one datapoint
delays a scale-out by one period, crashing the consumer would stop the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.client import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDatumTypeDef

log = logging.getLogger(__name__)

#: Entries of a service's streams not yet acknowledged by its consumer group (unread +
#: pending). Divided by the running task count it is the backlog per task that the
#: worker/priority target-tracking policies hold at their target.
STREAM_LAG = "StreamLag"
#: Age in seconds of the oldest unacknowledged entry: the queueing delay a message sees.
STREAM_LAG_AGE = "StreamLagAge"
#: The worker's share of the database (0..1, :class:`chat.pressure.DbShare`): below 1
#: while it yields to slow live inserts. Its Minimum over a load test says how far bulk
#: stepped aside, and explains a bulk rate under the offered one.
BULK_DB_SHARE = "BulkDbShare"
#: Send-to-display latency of live messages in ms, measured by the load generator.
LIVE_LATENCY = "LiveLatency"
#: The one dimension of our metrics: the service (``worker``, ``priority``, ``loadtest``).
SERVICE_DIMENSION = "Service"

#: CloudWatch accepts at most 150 distinct values in one datum's Values/Counts arrays.
_MAX_VALUES_PER_DATUM = 150
#: and at most 1000 datums per PutMetricData request.
_MAX_DATUMS_PER_CALL = 1000

Statistic = Literal["Average", "Maximum", "Minimum", "Sum", "SampleCount"]
#: Returns (lag in entries, age of the oldest unacknowledged entry in seconds).
LagProbe = Callable[[], Awaitable[tuple[int, float]]]
#: Returns the worker's current database share.
ShareProbe = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Datapoint:
    """One aggregated value of a metric over one period."""

    timestamp: datetime
    value: float


def publish_stream_lag(
    client: CloudWatchClient,
    namespace: str,
    service: str,
    lag_entries: int,
    oldest_age_s: float,
    *,
    db_share: float | None = None,
    timestamp: datetime | None = None,
) -> None:
    """Publish one lag sample (entries and oldest age) of ``service``, and its database
    share when it has one (the worker)."""
    when = timestamp or datetime.now(UTC)
    dimensions: list[DimensionTypeDef] = [{"Name": SERVICE_DIMENSION, "Value": service}]
    extra: list[MetricDatumTypeDef] = []
    if db_share is not None:
        extra.append(
            {
                "MetricName": BULK_DB_SHARE,
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": float(db_share),
                "Unit": "None",
            }
        )
    client.put_metric_data(
        Namespace=namespace,
        MetricData=[
            *extra,
            {
                "MetricName": STREAM_LAG,
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": float(lag_entries),
                "Unit": "Count",
            },
            {
                "MetricName": STREAM_LAG_AGE,
                "Dimensions": dimensions,
                "Timestamp": when,
                "Value": float(oldest_age_s),
                "Unit": "Seconds",
            },
        ],
    )


def publish_live_latency(
    client: CloudWatchClient,
    namespace: str,
    service: str,
    latencies_ms: Sequence[float],
    *,
    timestamp: datetime | None = None,
) -> None:
    """Publish raw latency samples (ms, rounded to 1 ms) so CloudWatch can compute p99."""
    if not latencies_ms:
        return
    when = timestamp or datetime.now(UTC)
    histogram = sorted(Counter(round(v) for v in latencies_ms).items())
    datums: list[MetricDatumTypeDef] = []
    for start in range(0, len(histogram), _MAX_VALUES_PER_DATUM):
        chunk = histogram[start : start + _MAX_VALUES_PER_DATUM]
        datums.append(
            {
                "MetricName": LIVE_LATENCY,
                "Dimensions": [{"Name": SERVICE_DIMENSION, "Value": service}],
                "Timestamp": when,
                "Values": [float(value) for value, _ in chunk],
                "Counts": [float(count) for _, count in chunk],
                "Unit": "Milliseconds",
            }
        )
    for start in range(0, len(datums), _MAX_DATUMS_PER_CALL):
        client.put_metric_data(
            Namespace=namespace, MetricData=datums[start : start + _MAX_DATUMS_PER_CALL]
        )


def read_metric(
    client: CloudWatchClient,
    namespace: str,
    metric_name: str,
    dimensions: Mapping[str, str],
    start: datetime,
    end: datetime,
    *,
    period_s: int = 60,
    statistic: Statistic = "Average",
) -> list[Datapoint]:
    """The datapoints of one metric between ``start`` and ``end``, oldest first."""
    response = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric_name,
        Dimensions=[{"Name": name, "Value": value} for name, value in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=period_s,
        Statistics=[statistic],
    )
    points = [
        Datapoint(timestamp=point["Timestamp"], value=float(point[statistic]))
        for point in response["Datapoints"]
        if statistic in point
    ]
    return sorted(points, key=lambda p: p.timestamp)


class LagPublisher:
    """Publishes a service's stream lag every ``interval_s`` until stopped.

    ``probe`` is the consumer's own lag measurement (XINFO GROUPS over its streams),
    ``share`` the worker's database share (None for the priority); the publisher owns
    only the timing and the CloudWatch call.
    """

    def __init__(
        self,
        client: CloudWatchClient,
        namespace: str,
        service: str,
        probe: LagProbe,
        *,
        share: ShareProbe | None = None,
        interval_s: float = 20.0,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._service = service
        self._probe = probe
        self._share = share
        self._interval_s = interval_s
        self.published = 0
        self.failed = 0

    async def publish_once(self) -> None:
        """Probe the lag and publish it; a failure is logged and counted, not raised."""
        try:
            lag, age = await self._probe()
            share = None if self._share is None else self._share()
            await asyncio.to_thread(
                publish_stream_lag,
                self._client,
                self._namespace,
                self._service,
                lag,
                age,
                db_share=share,
            )
        except Exception:
            # Broad on purpose: a metrics outage (CloudWatch, throttling, a Redis blip in
            # the probe) must never stop the consumer this publisher runs beside.
            self.failed += 1
            log.warning(
                "stream lag publish failed service=%s failed=%d",
                self._service,
                self.failed,
                exc_info=True,
            )
        else:
            self.published += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Publish now and then every interval until ``stop`` is set."""
        log.info(
            "lag publisher started service=%s namespace=%s interval_s=%s",
            self._service,
            self._namespace,
            self._interval_s,
        )
        while not stop.is_set():
            await self.publish_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
            except TimeoutError:
                continue
        log.info(
            "lag publisher stopped service=%s published=%d failed=%d",
            self._service,
            self.published,
            self.failed,
        )
