"""Compute tier: the ECS cluster, one task definition per image and one Fargate service
per long-running service (the load generator is a task definition run on demand).

Every task runs its image's own command (catalog.py, the Dockerfile's CMD), gets its
credentials only as ECS ``secrets``, writes JSON logs to its own log group, and has a
read-only root filesystem with two scratch volumes. ``stopTimeout`` is above the
services' drain deadline (SHUTDOWN_TIMEOUT_S), so a SIGTERM'd task finishes draining
before SIGKILL. Desired counts are set at creation only: afterwards autoscaling and
`make prewarm` own them (``ignore_changes``), so a `pulumi up` never shrinks a warm
load-test fleet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import ports
from infra.catalog import CATALOG, STATE_DIR, ServiceSpec
from infra.settings import SERVICES, StackSettings

#: Fargate platform version pinned rather than LATEST so a platform change is a reviewed
#: config change; 1.4.0 brings ephemeral storage, awsvpc ENI trunking and stats we use.
PLATFORM_VERSION = "1.4.0"
#: Soft and hard limit on open files: each gateway holds thousands of sockets.
NOFILE = 65535


@dataclass(frozen=True)
class ComputeArgs:
    """Inputs of the compute tier."""

    name: str
    settings: StackSettings
    region: str
    #: ``<account>.dkr.ecr.<region>.amazonaws.com``
    registry: str
    private_subnet_ids: Sequence[pulumi.Input[str]]
    security_group_ids: Mapping[str, pulumi.Input[str]]
    target_group_arn: pulumi.Input[str]
    #: The gateway service registers targets only once the listener exists.
    listener: pulumi.Resource
    execution_role_arns: Mapping[str, pulumi.Input[str]]
    task_role_arns: Mapping[str, pulumi.Input[str]]
    secret_arns: Mapping[str, pulumi.Input[str]]
    #: Plain environment shared by every container (region, bucket, partitions...).
    environment: Mapping[str, pulumi.Input[str]]
    #: Plain environment of one service, on top of the shared one.
    service_environment: Mapping[str, Mapping[str, pulumi.Input[str]]]


class Compute(pulumi.ComponentResource):
    """Cluster, log groups, task definitions and services."""

    cluster_name: pulumi.Output[str]
    cluster_arn: pulumi.Output[str]
    #: Long-running services by name (gateway, worker, priority).
    service_names: dict[str, pulumi.Output[str]]
    task_definition_arns: dict[str, pulumi.Output[str]]
    log_group_names: dict[str, pulumi.Output[str]]

    def __init__(self, args: ComputeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Compute", args.name, None, opts)
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        cluster = aws.ecs.Cluster(
            f"{args.name}-cluster",
            settings=[
                aws.ecs.ClusterSettingArgs(
                    name="containerInsights", value=args.settings.container_insights
                )
            ],
            opts=child,
        )
        aws.ecs.ClusterCapacityProviders(
            f"{args.name}-cluster",
            cluster_name=cluster.name,
            capacity_providers=["FARGATE"],
            opts=child,
        )
        self.cluster_name = cluster.name
        self.cluster_arn = cluster.arn
        self.task_definition_arns = {}
        self.log_group_names = {}
        self.service_names = {}
        for spec in CATALOG.values():
            task = self._task_definition(spec)
            self.task_definition_arns[spec.name] = task.arn
            if spec.name in SERVICES:
                self.service_names[spec.name] = self._service(spec, cluster, task)
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "service_names": self.service_names,
                "task_definitions": self.task_definition_arns,
            }
        )

    def _image(self, spec: ServiceSpec) -> str:
        s = self._args.settings
        return f"{self._args.registry}/{s.image_repository_prefix}/{spec.name}:{s.image_tag}"

    def _container(self, spec: ServiceSpec, log_group: aws.cloudwatch.LogGroup) -> Any:
        a = self._args
        environment = {
            **a.environment,
            **a.service_environment.get(spec.name, {}),
            **a.settings.service(spec.name).environment,
        }
        container: dict[str, Any] = {
            "name": spec.name,
            "image": self._image(spec),
            "essential": True,
            "portMappings": [{"containerPort": p, "protocol": "tcp"} for p in spec.ports],
            "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
            "secrets": [{"name": env, "valueFrom": a.secret_arns[env]} for env in spec.secrets],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": log_group.name,
                    "awslogs-region": a.region,
                    "awslogs-stream-prefix": spec.name,
                    # A log burst must never block the event loop; drop instead.
                    "mode": "non-blocking",
                    "max-buffer-size": "25m",
                },
            },
            "stopTimeout": a.settings.stop_timeout_s,
            "readonlyRootFilesystem": True,
            "mountPoints": [
                {"sourceVolume": "state", "containerPath": STATE_DIR},
                {"sourceVolume": "tmp", "containerPath": "/tmp"},  # noqa: S108
            ],
            "ulimits": [{"name": "nofile", "softLimit": NOFILE, "hardLimit": NOFILE}],
            "linuxParameters": {"initProcessEnabled": True},
        }
        if spec.health_check:
            container["healthCheck"] = {
                "command": ["CMD", *spec.health_check],
                "interval": 15,
                "timeout": 5,
                "retries": 3,
                "startPeriod": 30,
            }
        return pulumi.Output.json_dumps([container])

    def _task_definition(self, spec: ServiceSpec) -> aws.ecs.TaskDefinition:
        a = self._args
        child = pulumi.ResourceOptions(parent=self)
        size = a.settings.service(spec.name)
        log_group = aws.cloudwatch.LogGroup(
            f"{a.name}-{spec.name}",
            name=f"/chat/{a.settings.stack}/{spec.name}",
            retention_in_days=a.settings.log_retention_days,
            opts=child,
        )
        self.log_group_names[spec.name] = log_group.name
        return aws.ecs.TaskDefinition(
            f"{a.name}-{spec.name}",
            family=f"{a.name}-{spec.name}",
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            cpu=str(size.cpu),
            memory=str(size.memory),
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                operating_system_family="LINUX", cpu_architecture=a.settings.cpu_architecture
            ),
            execution_role_arn=a.execution_role_arns[spec.name],
            task_role_arn=a.task_role_arns[spec.name],
            container_definitions=self._container(spec, log_group),
            volumes=[
                aws.ecs.TaskDefinitionVolumeArgs(name="state"),
                aws.ecs.TaskDefinitionVolumeArgs(name="tmp"),
            ],
            opts=child,
        )

    def _service(
        self, spec: ServiceSpec, cluster: aws.ecs.Cluster, task: aws.ecs.TaskDefinition
    ) -> pulumi.Output[str]:
        a = self._args
        size = a.settings.service(spec.name)
        behind_alb = spec.name == "gateway"
        service = aws.ecs.Service(
            f"{a.name}-{spec.name}",
            cluster=cluster.arn,
            task_definition=task.arn,
            desired_count=size.desired,
            launch_type="FARGATE",
            platform_version=PLATFORM_VERSION,
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=list(a.private_subnet_ids),
                security_groups=[a.security_group_ids[spec.name]],
                assign_public_ip=False,
            ),
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(
                enable=True, rollback=True
            ),
            deployment_minimum_healthy_percent=100,
            deployment_maximum_percent=200,
            load_balancers=[
                aws.ecs.ServiceLoadBalancerArgs(
                    target_group_arn=a.target_group_arn,
                    container_name=spec.name,
                    container_port=ports.GATEWAY,
                )
            ]
            if behind_alb
            else None,
            health_check_grace_period_seconds=60 if behind_alb else None,
            propagate_tags="SERVICE",
            enable_ecs_managed_tags=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                ignore_changes=["desiredCount"],
                depends_on=[a.listener] if behind_alb else None,
            ),
        )
        return service.name
