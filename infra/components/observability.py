"""Observability tier: one CloudWatch dashboard and the alarms, notified through SNS.

The dashboard reads top to bottom like the message path: ALB -> gateways -> streams
(lag, the custom metric) -> workers -> DocumentDB / MySQL, plus Redis and the live
latency the load generator measures. Alarms fire on what a person must act on: errors
at the edge, unhealthy targets, saturated tasks or stores, and live messages waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from chat.cloudwatch import (
    BULK_DB_SHARE,
    LIVE_LATENCY,
    SERVICE_DIMENSION,
    STREAM_LAG,
    STREAM_LAG_AGE,
)
from infra.settings import RedisSettings

PERIOD_S = 60
#: Oldest unprocessed entry, seconds, past which each service's alarm fires: live
#: messages must appear at once; bulk may queue during a flood but not for minutes.
LAG_AGE_ALARM_S = {"priority": 2.0, "worker": 120.0}
LIVE_P99_ALARM_MS = 500.0


@dataclass(frozen=True)
class ObservabilityArgs:
    """Inputs of the observability tier."""

    name: str
    region: str
    metrics_namespace: str
    alarm_email: str
    alb_arn_suffix: pulumi.Input[str]
    target_group_arn_suffix: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    service_names: Mapping[str, pulumi.Input[str]]
    redis: RedisSettings
    redis_id: pulumi.Input[str]
    documentdb_id: pulumi.Input[str]
    mysql_ids: Sequence[pulumi.Input[str]]


@dataclass(frozen=True)
class _Alarm:
    key: str
    namespace: str
    metric: str
    dimensions: Mapping[str, pulumi.Input[str]]
    threshold: float
    description: str
    statistic: str = "Maximum"
    periods: int = 3
    missing: str = "missing"


class Observability(pulumi.ComponentResource):
    """SNS topic, alarms and the dashboard."""

    topic_arn: pulumi.Output[str]
    alarm_names: list[pulumi.Output[str]]
    dashboard_name: pulumi.Output[str]

    def __init__(self, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Observability", args.name, None, opts)
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(f"{args.name}-alarms", kms_master_key_id="alias/aws/sns", opts=child)
        if args.alarm_email:
            aws.sns.TopicSubscription(
                f"{args.name}-alarms-email",
                topic=topic.arn,
                protocol="email",
                endpoint=args.alarm_email,
                opts=child,
            )
        self.topic_arn = topic.arn
        self.alarm_names = [self._alarm(alarm) for alarm in self._alarms()]
        dashboard = aws.cloudwatch.Dashboard(
            f"{args.name}-dashboard",
            dashboard_name=args.name,
            dashboard_body=pulumi.Output.json_dumps({"widgets": self._widgets()}),
            opts=child,
        )
        self.dashboard_name = dashboard.dashboard_name
        self.register_outputs({"topic_arn": self.topic_arn, "dashboard": self.dashboard_name})

    # --- alarms ------------------------------------------------------------------------

    def _alarms(self) -> list[_Alarm]:
        a = self._args
        alb = {"LoadBalancer": a.alb_arn_suffix}
        alarms = [
            _Alarm(
                "alb-5xx",
                "AWS/ApplicationELB",
                "HTTPCode_ELB_5XX_Count",
                alb,
                50,
                "the ALB answers 5xx (no healthy gateway, or overload)",
                "Sum",
                missing="notBreaching",
            ),
            _Alarm(
                "gateway-5xx",
                "AWS/ApplicationELB",
                "HTTPCode_Target_5XX_Count",
                alb,
                100,
                "gateways answer 5xx",
                "Sum",
                missing="notBreaching",
            ),
            _Alarm(
                "gateway-unhealthy",
                "AWS/ApplicationELB",
                "UnHealthyHostCount",
                {**alb, "TargetGroup": a.target_group_arn_suffix},
                0,
                "a gateway fails /healthz",
            ),
            _Alarm(
                "mysql-cpu",
                "AWS/RDS",
                "CPUUtilization",
                {"DBInstanceIdentifier": a.mysql_ids[0]},
                80,
                "MySQL primary CPU",
                periods=5,
            ),
            _Alarm(
                "documentdb-cpu",
                "AWS/DocDB",
                "CPUUtilization",
                {"DBClusterIdentifier": a.documentdb_id},
                80,
                "DocumentDB CPU: the insert rate is near the writer's limit",
                periods=5,
            ),
            _Alarm(
                "live-latency-p99",
                a.metrics_namespace,
                LIVE_LATENCY,
                {SERVICE_DIMENSION: "loadtest"},
                LIVE_P99_ALARM_MS,
                "live messages take longer than 500 ms to appear",
                "p99",
                missing="notBreaching",
            ),
        ]
        for service, ecs_name in a.service_names.items():
            dims = {"ClusterName": a.cluster_name, "ServiceName": ecs_name}
            alarms.append(
                _Alarm(
                    f"{service}-cpu",
                    "AWS/ECS",
                    "CPUUtilization",
                    dims,
                    85,
                    f"{service} tasks CPU-saturated",
                    "Average",
                    periods=5,
                )
            )
            alarms.append(
                _Alarm(
                    f"{service}-memory",
                    "AWS/ECS",
                    "MemoryUtilization",
                    dims,
                    85,
                    f"{service} tasks near their memory limit",
                    "Average",
                )
            )
        for service, seconds in LAG_AGE_ALARM_S.items():
            alarms.append(
                _Alarm(
                    f"{service}-lag-age",
                    a.metrics_namespace,
                    STREAM_LAG_AGE,
                    {SERVICE_DIMENSION: service},
                    seconds,
                    f"{service} streams: oldest entry waits over {seconds:g} s",
                    missing="breaching",
                )
            )
        alarms.extend(self._redis_alarms())
        for i, replica in enumerate(a.mysql_ids[1:]):
            alarms.append(
                _Alarm(
                    f"mysql-replica-{i}-lag",
                    "AWS/RDS",
                    "ReplicaLag",
                    {"DBInstanceIdentifier": replica},
                    30,
                    "MySQL replica lag",
                )
            )
        return alarms

    def _redis_alarms(self) -> list[_Alarm]:
        a = self._args
        if a.redis.backend == "memorydb":
            dims: Mapping[str, pulumi.Input[str]] = {"ClusterName": a.redis_id}
            return [
                _Alarm(
                    "redis-cpu",
                    "AWS/MemoryDB",
                    "EngineCPUUtilization",
                    dims,
                    80,
                    "MemoryDB engine CPU (one thread per shard)",
                ),
                _Alarm(
                    "redis-memory",
                    "AWS/MemoryDB",
                    "DatabaseMemoryUsagePercentage",
                    dims,
                    80,
                    "MemoryDB memory: stream backlog near the node's limit",
                ),
            ]
        # ElastiCache publishes per node; node ids are <group>-<shard:04>-<node:03>.
        alarms = []
        for shard in range(1, a.redis.shards + 1):
            node = pulumi.Output.format("{0}-{1:04d}-001", a.redis_id, shard)
            dims = {"CacheClusterId": node}
            alarms.append(
                _Alarm(
                    f"redis-{shard}-cpu",
                    "AWS/ElastiCache",
                    "EngineCPUUtilization",
                    dims,
                    80,
                    f"Redis shard {shard} engine CPU",
                )
            )
            alarms.append(
                _Alarm(
                    f"redis-{shard}-memory",
                    "AWS/ElastiCache",
                    "DatabaseMemoryUsagePercentage",
                    dims,
                    80,
                    f"Redis shard {shard} memory: backlog near the limit",
                )
            )
        return alarms

    def _alarm(self, alarm: _Alarm) -> pulumi.Output[str]:
        percentile = alarm.statistic.startswith("p")
        resource = aws.cloudwatch.MetricAlarm(
            f"{self._args.name}-{alarm.key}",
            alarm_description=alarm.description,
            namespace=alarm.namespace,
            metric_name=alarm.metric,
            dimensions=dict(alarm.dimensions),
            statistic=None if percentile else alarm.statistic,
            extended_statistic=alarm.statistic if percentile else None,
            period=PERIOD_S,
            evaluation_periods=alarm.periods,
            threshold=alarm.threshold,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data=alarm.missing,
            alarm_actions=[self.topic_arn],
            ok_actions=[self.topic_arn],
            opts=pulumi.ResourceOptions(parent=self),
        )
        return resource.name

    # --- dashboard ---------------------------------------------------------------------

    def _widget(self, title: str, metrics: list[list[Any]], stat: str = "Sum") -> dict[str, Any]:
        return {
            "type": "metric",
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": self._args.region,
                "stat": stat,
                "period": PERIOD_S,
                "view": "timeSeries",
                "metrics": metrics,
            },
        }

    def _widgets(self) -> list[dict[str, Any]]:
        a = self._args
        ns = a.metrics_namespace
        alb = ["LoadBalancer", a.alb_arn_suffix]
        ecs = [
            ["AWS/ECS", "CPUUtilization", "ClusterName", a.cluster_name, "ServiceName", name]
            for name in a.service_names.values()
        ]
        tasks = [
            [
                "ECS/ContainerInsights",
                "RunningTaskCount",
                "ClusterName",
                a.cluster_name,
                "ServiceName",
                name,
            ]
            for name in a.service_names.values()
        ]
        redis_ns = "AWS/MemoryDB" if a.redis.backend == "memorydb" else "AWS/ElastiCache"
        redis_search = pulumi.Output.format(
            "SEARCH('{{{0}}} MetricName=\"EngineCPUUtilization\" \"{1}\"', 'Maximum', {2})",
            redis_ns,
            a.redis_id,
            PERIOD_S,
        )
        return [
            self._widget(
                "ALB requests and 5xx",
                [
                    ["AWS/ApplicationELB", "RequestCount", *alb],
                    ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", *alb],
                    ["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", *alb],
                    ["AWS/ApplicationELB", "ActiveConnectionCount", *alb],
                ],
            ),
            self._widget("ECS CPU by service", ecs, "Average"),
            self._widget("Running tasks", tasks, "Average"),
            self._widget(
                "Stream lag (entries)",
                [
                    [ns, STREAM_LAG, SERVICE_DIMENSION, "worker"],
                    [ns, STREAM_LAG, SERVICE_DIMENSION, "priority"],
                ],
                "Maximum",
            ),
            self._widget(
                "Stream lag age (s)",
                [
                    [ns, STREAM_LAG_AGE, SERVICE_DIMENSION, "worker"],
                    [ns, STREAM_LAG_AGE, SERVICE_DIMENSION, "priority"],
                ],
                "Maximum",
            ),
            self._widget(
                "Worker database share (1 = all; lower while yielding to live)",
                [
                    [ns, BULK_DB_SHARE, SERVICE_DIMENSION, "worker", {"stat": "Minimum"}],
                    [ns, BULK_DB_SHARE, SERVICE_DIMENSION, "worker", {"stat": "Average"}],
                ],
                "Average",
            ),
            self._widget(
                "Live latency (ms)",
                [
                    [ns, LIVE_LATENCY, SERVICE_DIMENSION, "loadtest", {"stat": "p50"}],
                    [ns, LIVE_LATENCY, SERVICE_DIMENSION, "loadtest", {"stat": "p99"}],
                ],
                "p99",
            ),
            self._widget(
                "Redis engine CPU (every node)", [[{"expression": redis_search}]], "Maximum"
            ),
            self._widget(
                "DocumentDB",
                [
                    ["AWS/DocDB", "CPUUtilization", "DBClusterIdentifier", a.documentdb_id],
                    [
                        "AWS/DocDB",
                        "OpcountersInsert",
                        "DBClusterIdentifier",
                        a.documentdb_id,
                        {"stat": "Sum"},
                    ],
                ],
                "Maximum",
            ),
            self._widget(
                "MySQL",
                [
                    ["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", mysql_id]
                    for mysql_id in a.mysql_ids
                ]
                + [["AWS/RDS", "DatabaseConnections", "DBInstanceIdentifier", a.mysql_ids[0]]],
                "Maximum",
            ),
        ]
