"""The Pulumi program: read the stack's config once, build every tier, export outputs.

``main()`` is what ``pulumi up`` runs (through ``infra/__main__.py``); ``build()`` takes
already-read settings so the tests run it under ``pulumi.runtime.set_mocks`` with each
``Pulumi.<stack>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import ports
from infra.catalog import STATE_DIR
from infra.components.compute import Compute, ComputeArgs
from infra.components.data import Data, DataArgs
from infra.components.edge import Edge, EdgeArgs
from infra.components.iam import Iam, IamArgs
from infra.components.network import Network, NetworkArgs
from infra.components.observability import Observability, ObservabilityArgs
from infra.components.scaling import Scaling, ScalingArgs
from infra.settings import PROJECT, SERVICES, StackSettings, camel


@dataclass(frozen=True)
class Stack:
    """The tiers of one stack, for the outputs and for tests."""

    network: Network
    edge: Edge
    data: Data
    iam: Iam
    compute: Compute
    scaling: Scaling
    observability: Observability


def read_settings() -> StackSettings:
    """The stack's settings from ``pulumi.Config`` (read here, and only here)."""
    config = pulumi.Config(PROJECT)
    keys = [camel(name) for name in StackSettings.__dataclass_fields__ if name != "stack"]
    raw = {key: value for key in keys if (value := config.get(key)) is not None}
    return StackSettings.from_strings(pulumi.get_stack(), raw)


def shared_environment(
    settings: StackSettings, region: str, bucket: pulumi.Output[str]
) -> dict[str, pulumi.Input[str]]:
    """Plain (non-secret) settings every container gets."""
    return {
        "AWS_REGION": region,
        "LOG_FORMAT": "json",
        "REDIS_CLUSTER": "true",
        "STREAM_PARTITIONS": str(settings.stream_partitions),
        "S3_BUCKET": bucket,
        "CLOUDWATCH_NAMESPACE": settings.namespace,
        "SHUTDOWN_TIMEOUT_S": str(settings.shutdown_timeout_s),
        "LOCAL_DIR": STATE_DIR,
        "FANOUT_PORT": str(ports.FANOUT),
    }


def service_environment(
    settings: StackSettings, url: str
) -> dict[str, dict[str, pulumi.Input[str]]]:
    """Plain settings of single services."""
    consumer: dict[str, pulumi.Input[str]] = {"HEALTH_PORT": str(ports.HEALTH)}
    return {
        "gateway": {
            "GATEWAY_HOST": "0.0.0.0",  # noqa: S104 - the task's own ENI; the SG limits who reaches it
            "GATEWAY_PORT": str(ports.GATEWAY),
            "FANOUT_ADVERTISE_HOST": "ecs",
            "ALLOWED_ORIGINS": url,
            "SQL_MIGRATE_ON_START": str(settings.sql_migrate_on_start).lower(),
        },
        "worker": consumer,
        "priority": consumer,
        "loadtest": {"LOADTEST_TARGET_URL": url},
    }


def build(settings: StackSettings) -> Stack:
    """Create every tier of the stack described by ``settings``."""
    name = f"chat-{settings.stack}"
    region = aws.get_region().region
    account_id = aws.get_caller_identity().account_id
    zones = aws.get_availability_zones(state="available").names[: settings.network.az_count]
    network = Network(NetworkArgs(name, region, settings.network, zones))
    edge = Edge(
        EdgeArgs(
            name=name,
            settings=settings.edge,
            domain_name=settings.domain_name,
            hosted_zone_name=settings.hosted_zone_name,
            certificate_arn=settings.certificate_arn,
            vpc_id=network.vpc_id,
            public_subnet_ids=network.public_subnet_ids,
            security_group_id=network.alb_security_group_id,
        )
    )
    url = f"https://{settings.domain_name}"
    data = Data(
        DataArgs(
            name=name,
            redis=settings.redis,
            documentdb=settings.documentdb,
            mysql=settings.mysql,
            private_subnet_ids=network.private_subnet_ids,
            security_group_ids=dict(network.data_security_group_ids),
            web_origin=url,
            protect=settings.protect_data,
        )
    )
    iam = Iam(
        IamArgs(
            name=name,
            account_id=account_id,
            region=region,
            metrics_namespace=settings.namespace,
            kms_key_arn=data.kms_key_arn,
            bucket_arn=data.bucket_arn,
            secret_arns=data.secret_arns,
        )
    )
    compute = Compute(
        ComputeArgs(
            name=name,
            settings=settings,
            region=region,
            registry=f"{account_id}.dkr.ecr.{region}.amazonaws.com",
            private_subnet_ids=network.private_subnet_ids,
            security_group_ids=network.task_security_group_ids,
            target_group_arn=edge.target_group_arn,
            listener=edge.https_listener,
            execution_role_arns=iam.execution_role_arns,
            task_role_arns=iam.task_role_arns,
            secret_arns=data.secret_arns,
            environment=shared_environment(settings, region, data.bucket_name),
            service_environment=service_environment(settings, url),
        )
    )
    scaling = Scaling(
        ScalingArgs(
            name=name,
            cluster_name=compute.cluster_name,
            service_names=compute.service_names,
            services={svc: settings.service(svc) for svc in SERVICES},
            metrics_namespace=settings.namespace,
        )
    )
    observability = Observability(
        ObservabilityArgs(
            name=name,
            region=region,
            metrics_namespace=settings.namespace,
            alarm_email=settings.alarm_email,
            alb_arn_suffix=edge.alb_arn_suffix,
            target_group_arn_suffix=edge.target_group_arn_suffix,
            cluster_name=compute.cluster_name,
            service_names=compute.service_names,
            redis=settings.redis,
            redis_id=data.redis_id,
            documentdb_id=data.documentdb_id,
            mysql_ids=data.mysql_ids,
        )
    )
    return Stack(network, edge, data, iam, compute, scaling, observability)


def export(settings: StackSettings, region: str, stack: Stack) -> None:
    """Stack outputs: what `make prewarm`, the load test and people need (no secrets)."""
    compute = stack.compute
    pulumi.export("url", stack.edge.url)
    pulumi.export("region", region)
    pulumi.export("cluster", compute.cluster_name)
    pulumi.export(
        "services",
        {
            svc: {
                "name": compute.service_names[svc],
                "min": settings.service(svc).min_tasks,
                "max": settings.service(svc).max_tasks,
                "prewarm": settings.service(svc).prewarm_tasks,
            }
            for svc in SERVICES
        },
    )
    pulumi.export(
        "loadtest",
        {
            "task_definition": compute.task_definition_arns["loadtest"],
            "tasks": settings.loadtest.desired,
            "subnets": stack.network.private_subnet_ids,
            # Generators in public subnets (assignPublicIp, no inbound rule) reach the ALB
            # without paying NAT data processing on the whole test's traffic.
            "public_subnets": stack.network.public_subnet_ids,
            "security_group": stack.network.task_security_group_ids["loadtest"],
            "log_group": compute.log_group_names["loadtest"],
        },
    )
    # CloudWatch dimensions the load-test report charts (loadtest/awsmetrics.py).
    pulumi.export("alb_arn_suffix", stack.edge.alb_arn_suffix)
    pulumi.export("documentdb_id", stack.data.documentdb_id)
    pulumi.export("redis_id", stack.data.redis_id)
    pulumi.export("bucket", stack.data.bucket_name)
    pulumi.export("metrics_namespace", settings.namespace)
    pulumi.export("dashboard", stack.observability.dashboard_name)
    pulumi.export("alarm_topic", stack.observability.topic_arn)


def main() -> None:
    """Entry point of ``pulumi up``."""
    settings = read_settings()
    stack = build(settings)
    export(settings, aws.get_region().region, stack)
