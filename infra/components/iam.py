"""IAM tier: per service, one execution role (what ECS does to start the task) and one
task role (what the process may do), each least-privilege.

Execution role: pull the image and write logs (AWS managed policy), read only this
service's secrets and decrypt them with the stack key. Task role: the S3 actions of
the catalog on the attachment bucket (a prefix of it for the load generator),
``cloudwatch:PutMetricData`` limited to the stack's namespace, and metric reads for the
load generator only. No task-role statement has a wildcard action.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.catalog import CATALOG, ServiceSpec

EXECUTION_POLICY_ARN = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"


@dataclass(frozen=True)
class IamArgs:
    """Inputs of the IAM tier."""

    name: str
    account_id: str
    region: str
    metrics_namespace: str
    kms_key_arn: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    #: Environment variable name -> Secrets Manager ARN.
    secret_arns: Mapping[str, pulumi.Input[str]]


class Iam(pulumi.ComponentResource):
    """Execution and task roles of every service in the catalog."""

    execution_role_arns: dict[str, pulumi.Output[str]]
    task_role_arns: dict[str, pulumi.Output[str]]

    def __init__(self, args: IamArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Iam", args.name, None, opts)
        self._args = args
        self.execution_role_arns = {}
        self.task_role_arns = {}
        for spec in CATALOG.values():
            self.execution_role_arns[spec.name] = self._execution_role(spec)
            self.task_role_arns[spec.name] = self._task_role(spec)
        self.register_outputs(
            {"execution_roles": self.execution_role_arns, "task_roles": self.task_role_arns}
        )

    def _assume_role_policy(self) -> str:
        """Only ECS tasks of this account and region may assume the role."""
        a = self._args
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                        "Condition": {
                            "StringEquals": {"aws:SourceAccount": a.account_id},
                            "ArnLike": {
                                "aws:SourceArn": f"arn:aws:ecs:{a.region}:{a.account_id}:*"
                            },
                        },
                    }
                ],
            }
        )

    def _role(self, name: str, statements: list[dict[str, Any]]) -> aws.iam.Role:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(name, assume_role_policy=self._assume_role_policy(), opts=child)
        aws.iam.RolePolicy(
            name,
            role=role.id,
            policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": statements}),
            opts=child,
        )
        return role

    def _execution_role(self, spec: ServiceSpec) -> pulumi.Output[str]:
        a = self._args
        name = f"{a.name}-{spec.name}-execution"
        role = self._role(
            name,
            [
                {
                    "Sid": "ReadOwnSecrets",
                    "Effect": "Allow",
                    "Action": ["secretsmanager:GetSecretValue"],
                    "Resource": [a.secret_arns[env] for env in spec.secrets],
                },
                {
                    "Sid": "DecryptOwnSecrets",
                    "Effect": "Allow",
                    "Action": ["kms:Decrypt"],
                    "Resource": [a.kms_key_arn],
                },
            ],
        )
        aws.iam.RolePolicyAttachment(
            name,
            role=role.name,
            policy_arn=EXECUTION_POLICY_ARN,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return role.arn

    def _task_role(self, spec: ServiceSpec) -> pulumi.Output[str]:
        a = self._args
        objects = pulumi.Output.concat(a.bucket_arn, "/", spec.s3_prefix, "*")
        kms_actions = ["kms:Decrypt"]
        if "s3:PutObject" in spec.s3_actions:
            kms_actions.append("kms:GenerateDataKey")
        statements: list[dict[str, Any]] = [
            {
                "Sid": "Attachments",
                "Effect": "Allow",
                "Action": list(spec.s3_actions),
                "Resource": [objects],
            },
            {
                "Sid": "AttachmentEncryption",
                "Effect": "Allow",
                "Action": kms_actions,
                "Resource": [a.kms_key_arn],
            },
            {
                # PutMetricData has no resource ARN; the namespace condition scopes it.
                "Sid": "PublishOwnMetrics",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": a.metrics_namespace}},
            },
        ]
        if spec.reads_metrics:
            statements.append(
                {
                    # Metric reads have no resource-level permissions either.
                    "Sid": "ReadMetrics",
                    "Effect": "Allow",
                    "Action": ["cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics"],
                    "Resource": "*",
                }
            )
        return self._role(f"{a.name}-{spec.name}-task", statements).arn
