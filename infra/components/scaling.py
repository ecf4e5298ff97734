"""Scaling tier: target tracking per service, within the min/max of the stack's config.

- gateway: average CPU at ``scale_target`` % (70 by default). A gateway's cost is
  parsing and fanning out frames, which CPU tracks; sticky WebSockets make scale-in
  cost reconnects, hence the long scale-in cooldown.
- worker, priority: stream lag per running task at ``scale_target`` entries. The lag
  is the custom metric the services publish (chat.cloudwatch.STREAM_LAG, dimension
  Service); dividing by Container Insights' RunningTaskCount makes it a backlog per
  task, which target tracking can scale proportionally (the AWS-recommended shape
  for queue consumers).

`make prewarm` (infra/tools/prewarm.py) raises the min to the test size for a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationArgs as _Tracking,
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationArgs as _Spec,
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationMetricArgs as _Query,
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationMetricMetricStatArgs as _Stat,  # noqa: E501
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationMetricMetricStatMetricArgs as _Metric,  # noqa: E501
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationMetricMetricStatMetricDimensionArgs as _Dimension,  # noqa: E501
)
from pulumi_aws.appautoscaling import (
    PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs as _Predefined,
)

from chat.cloudwatch import SERVICE_DIMENSION, STREAM_LAG
from infra.settings import ServiceSettings

SCALE_OUT_COOLDOWN_S = 60
SCALE_IN_COOLDOWN_S = 300


@dataclass(frozen=True)
class ScalingArgs:
    """Inputs of the scaling tier."""

    name: str
    cluster_name: pulumi.Input[str]
    #: ECS service name per service (gateway, worker, priority).
    service_names: Mapping[str, pulumi.Input[str]]
    services: Mapping[str, ServiceSettings]
    metrics_namespace: str


class Scaling(pulumi.ComponentResource):
    """One scalable target and one target-tracking policy per service."""

    def __init__(self, args: ScalingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Scaling", args.name, None, opts)
        self._args = args
        resource_ids: dict[str, pulumi.Output[str]] = {}
        for service, ecs_name in args.service_names.items():
            size = args.services[service]
            target = aws.appautoscaling.Target(
                f"{args.name}-{service}",
                service_namespace="ecs",
                scalable_dimension="ecs:service:DesiredCount",
                resource_id=pulumi.Output.format("service/{0}/{1}", args.cluster_name, ecs_name),
                min_capacity=size.min_tasks,
                max_capacity=size.max_tasks,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self._policy(service, target, ecs_name, size.scale_target)
            resource_ids[service] = target.resource_id
        self.register_outputs({"resource_ids": resource_ids})

    def _policy(
        self,
        service: str,
        target: aws.appautoscaling.Target,
        ecs_name: pulumi.Input[str],
        value: float,
    ) -> None:
        config = _Tracking(
            target_value=value,
            scale_out_cooldown=SCALE_OUT_COOLDOWN_S,
            scale_in_cooldown=SCALE_IN_COOLDOWN_S,
            predefined_metric_specification=(
                _Predefined(predefined_metric_type="ECSServiceAverageCPUUtilization")
                if service == "gateway"
                else None
            ),
            customized_metric_specification=(
                None if service == "gateway" else self._lag_per_task(service, ecs_name)
            ),
        )
        aws.appautoscaling.Policy(
            f"{self._args.name}-{service}",
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension,
            resource_id=target.resource_id,
            target_tracking_scaling_policy_configuration=config,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _lag_per_task(self, service: str, ecs_name: pulumi.Input[str]) -> _Spec:
        """Metric math: the service's stream lag / its running tasks."""
        lag = _Query(
            id="lag",
            return_data=False,
            metric_stat=_Stat(
                stat="Maximum",
                metric=_Metric(
                    namespace=self._args.metrics_namespace,
                    metric_name=STREAM_LAG,
                    dimensions=[_Dimension(name=SERVICE_DIMENSION, value=service)],
                ),
            ),
        )
        tasks = _Query(
            id="tasks",
            return_data=False,
            metric_stat=_Stat(
                stat="Average",
                metric=_Metric(
                    namespace="ECS/ContainerInsights",
                    metric_name="RunningTaskCount",
                    dimensions=[
                        _Dimension(name="ClusterName", value=self._args.cluster_name),
                        _Dimension(name="ServiceName", value=ecs_name),
                    ],
                ),
            ),
        )
        per_task = _Query(id="lag_per_task", expression="lag / tasks", return_data=True)
        return _Spec(metrics=[lag, tasks, per_task])
