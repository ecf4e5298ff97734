"""What each image runs and needs: the one description the task definitions, the IAM
policies and the Dockerfile test (tests/infra/test_images.py) all read.

A service's command here, its Dockerfile's CMD and `make run` are the same command;
the health check here is its Dockerfile's HEALTHCHECK. Change them together.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra import ports

#: Environment variables that only ever arrive as ECS secrets (Secrets Manager).
SECRET_ENV = ("REDIS_URL", "MONGO_URL", "SQL_URL", "JWT_SECRET")
#: Writable directory of a task (heartbeats, scratch); the root filesystem is read-only.
STATE_DIR = "/var/lib/chat"


@dataclass(frozen=True)
class ServiceSpec:
    """One image: its command, ports, secrets and AWS permissions."""

    name: str
    command: tuple[str, ...]
    #: Container health check; None for a batch task.
    health_check: tuple[str, ...] | None
    ports: tuple[int, ...]
    secrets: tuple[str, ...]
    #: S3 actions on the attachment bucket, and the key prefix they are limited to.
    s3_actions: tuple[str, ...]
    s3_prefix: str = ""
    #: Reads CloudWatch metrics (the load-test report) besides publishing its own.
    reads_metrics: bool = False


CATALOG: dict[str, ServiceSpec] = {
    "gateway": ServiceSpec(
        name="gateway",
        command=("python", "-m", "gateway"),
        health_check=("python", "-m", "gateway", "--check"),
        ports=(ports.GATEWAY, ports.FANOUT),
        secrets=SECRET_ENV,
        # Presigned upload/download URLs carry the task role's permissions.
        s3_actions=("s3:PutObject", "s3:GetObject"),
    ),
    "worker": ServiceSpec(
        name="worker",
        command=("python", "-m", "worker"),
        health_check=("python", "-m", "worker", "--check"),
        ports=(ports.HEALTH,),
        secrets=("REDIS_URL", "MONGO_URL", "SQL_URL"),
        s3_actions=("s3:GetObject",),
    ),
    "priority": ServiceSpec(
        name="priority",
        command=("python", "-m", "priority"),
        health_check=("python", "-m", "priority", "--check"),
        ports=(ports.HEALTH,),
        secrets=("REDIS_URL", "MONGO_URL", "SQL_URL"),
        s3_actions=("s3:GetObject",),
    ),
    "loadtest": ServiceSpec(
        name="loadtest",
        command=("python", "-m", "loadtest", "run"),
        health_check=None,
        ports=(),
        # The verifier reads every accepted message back from DocumentDB.
        secrets=("MONGO_URL",),
        s3_actions=("s3:PutObject",),
        s3_prefix="loadtest-results/",
        reads_metrics=True,
    ),
}
