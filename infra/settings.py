"""The stack's settings: every size, count, instance type and limit, with its default.

Stacks differ only in their ``Pulumi.<stack>.yaml``. A top-level key there is the
camelCase name of a ``StackSettings`` field (``chat-platform:logRetentionDays: 14``); a
section (``network``, ``edge``, ``redis``, ``documentdb``, ``mysql`` and one per
service) is an object whose keys are the camelCase names of its dataclass fields and
which overrides only the keys it names. An unknown key in a section is an error: a typo
must not deploy a default silently.

Defaults are the small, cheap end (what ``dev`` uses); ``Pulumi.loadtest.yaml`` says
what it raises and why.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from chat.config import Settings as ServiceEnv
from infra.catalog import SECRET_ENV

#: Every environment variable a service reads (libs/chat/config.py): a stack that sets
#: anything else has a typo the service would silently ignore.
KNOWN_ENV = frozenset(name.upper() for name in ServiceEnv.model_fields)

#: The Pulumi project name, which is also the config namespace of our keys.
PROJECT = "chat-platform"
#: The long-running ECS services; each is ``python -m <name>`` in its own image.
SERVICES = ("gateway", "worker", "priority")
#: The load generator: a task definition run on demand (``python -m loadtest run``).
LOADTEST = "loadtest"
#: Every image `make images` builds and pushes.
IMAGES = (*SERVICES, LOADTEST)
#: Fargate task CPU units allowed (memory must match the CPU's range too).
FARGATE_CPU = (256, 512, 1024, 2048, 4096, 8192, 16384)
#: Fargate kills a task this long after SIGTERM at most, whatever stopTimeout says.
FARGATE_MAX_STOP_TIMEOUT_S = 120
#: Shard vCPU sizes DocumentDB elastic clusters accept.
ELASTIC_SHARD_CAPACITY = (2, 4, 8, 16, 32, 64)


class SettingsError(ValueError):
    """A stack setting is missing or invalid; the message names the config key."""


@dataclass(frozen=True)
class NetworkSettings:
    """VPC shape."""

    vpc_cidr: str = "10.0.0.0/16"
    #: Subnets are spread over this many availability zones (the ALB needs two).
    az_count: int = 3
    #: 1 is cheap; one per AZ keeps private subnets online when an AZ fails.
    nat_gateways: int = 1


@dataclass(frozen=True)
class EdgeSettings:
    """ALB and DNS."""

    #: WebSockets idle between pings; 3600 s lets a quiet client stay connected.
    idle_timeout_s: int = 3600
    #: Covers in-flight HTTP requests only: gateways drain WebSockets themselves on SIGTERM
    #: (a ``reconnect`` frame, then close), so a longer delay only slows deployments.
    deregistration_delay_s: int = 30
    stickiness_s: int = 86400
    #: ALB capacity reservation in LCUs (0 = none); the load test reserves capacity so the
    #: first minutes of the ramp do not wait for the ALB to scale.
    capacity_units: int = 0
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"


@dataclass(frozen=True)
class RedisSettings:
    """The stream store: ElastiCache (cluster mode) or MemoryDB (durable, zero loss)."""

    backend: Literal["elasticache", "memorydb"] = "elasticache"
    node_type: str = "cache.t4g.small"
    shards: int = 1
    replicas_per_shard: int = 1
    engine_version: str = "7.1"
    snapshot_retention_days: int = 1


@dataclass(frozen=True)
class DocumentDbSettings:
    """The message store: an instance-based cluster or an elastic (sharded) one."""

    mode: Literal["instance", "elastic"] = "instance"
    instance_class: str = "db.t4g.medium"
    instances: int = 1
    engine_version: str = "5.0.0"
    #: ``iopt1`` (I/O-Optimized) trades a higher instance price for no per-I/O charge,
    #: the cheaper choice at load-test insert rates.
    storage_type: Literal["standard", "iopt1"] = "standard"
    #: elastic mode: vCPUs per shard, shards, and instances per shard (1 writer + replicas).
    shard_capacity: int = 2
    shard_count: int = 2
    shard_instance_count: int = 2
    backup_retention_days: int = 1


@dataclass(frozen=True)
class MysqlSettings:
    """Users and chats: RDS MySQL."""

    instance_class: str = "db.t4g.micro"
    #: Defaults to ``instance_class``.
    replica_instance_class: str = ""
    allocated_storage_gb: int = 20
    max_allocated_storage_gb: int = 100
    multi_az: bool = True
    read_replicas: int = 1
    engine_version: str = "8.4"
    #: 0 keeps RDS's memory-based default; raise it when tasks x pool size exceeds it.
    max_connections: int = 0
    #: Must stay >= 1 while there is a read replica (RDS replicates from backups).
    backup_retention_days: int = 1


@dataclass(frozen=True)
class ServiceSettings:
    """Size and count of one ECS service (or, for ``loadtest``, of one test run)."""

    cpu: int = 1024
    memory: int = 2048
    #: Tasks at creation; afterwards autoscaling and `make prewarm` own the count.
    desired: int = 1
    min_tasks: int = 1
    max_tasks: int = 4
    #: Tasks `make prewarm` raises the service to (and pins as the minimum); 0 = desired.
    prewarm: int = 0
    #: Target-tracking value: average CPU % (gateway) or stream lag entries per task
    #: (worker, priority). Unused by ``loadtest``.
    scale_target: float = 70.0
    #: Extra plain environment variables (replaces the default map when given); secret
    #: names are refused.
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def prewarm_tasks(self) -> int:
        """The task count of a prewarmed service."""
        return self.prewarm or self.desired


@dataclass(frozen=True)
class StackSettings:
    """Everything the program needs; built once from the stack's config."""

    stack: str
    #: Public name of the chat (``chat.example.com``), in ``hosted_zone_name``.
    domain_name: str
    hosted_zone_name: str
    #: Tag of every image; `make deploy` sets it to the tag `make images` pushed.
    image_tag: str
    #: Use this ACM certificate instead of issuing one for ``domain_name``.
    certificate_arn: str = ""
    image_repository_prefix: str = "chat-platform"
    cpu_architecture: Literal["X86_64", "ARM64"] = "X86_64"
    log_retention_days: int = 14
    container_insights: Literal["enabled", "enhanced"] = "enabled"
    #: SHUTDOWN_TIMEOUT_S of every service: the drain deadline after SIGTERM.
    shutdown_timeout_s: int = 20
    #: ECS stopTimeout: SIGKILL this long after SIGTERM; must exceed the drain deadline.
    stop_timeout_s: int = 30
    stream_partitions: int = 16
    #: CloudWatch namespace of our custom metrics; default ``ChatPlatform/<stack>``.
    metrics_namespace: str = ""
    #: Alarm notifications go to this address (an SNS e-mail subscription) when set.
    alarm_email: str = ""
    #: Deletion protection, final snapshots and a retained bucket (off for test stacks).
    protect_data: bool = False
    #: Run the SQL migrations when a gateway boots (see docs/deploy.md before disabling).
    sql_migrate_on_start: bool = True
    network: NetworkSettings = NetworkSettings()
    edge: EdgeSettings = EdgeSettings()
    redis: RedisSettings = RedisSettings()
    documentdb: DocumentDbSettings = DocumentDbSettings()
    mysql: MysqlSettings = MysqlSettings()
    gateway: ServiceSettings = ServiceSettings(scale_target=70.0)
    #: BULK_YIELD_TARGET_MS: live inserts on DocumentDB (a quorum write across three AZs)
    #: take several ms when the writer is idle, more than SecantusDB's ~2.5 ms; 20 ms is
    #: a starting point, to be replaced by ~2x the uncontended live insert mean that the
    #: first load test measures (docs/capacity.md).
    worker: ServiceSettings = ServiceSettings(
        scale_target=20_000.0,
        environment={"BATCH": "500", "BLOCK_MS": "1000", "BULK_YIELD_TARGET_MS": "20"},
    )
    #: Live messages are few and latency-bound: small batches, a short block, and a scale
    #: out long before a backlog builds.
    priority: ServiceSettings = ServiceSettings(
        cpu=512,
        memory=1024,
        scale_target=200.0,
        environment={"LIVE_BATCH": "50", "LIVE_BLOCK_MS": "100"},
    )
    loadtest: ServiceSettings = ServiceSettings(desired=1, min_tasks=0, max_tasks=1)

    @property
    def namespace(self) -> str:
        """The CloudWatch namespace of the custom metrics."""
        return self.metrics_namespace or f"ChatPlatform/{self.stack}"

    def service(self, name: str) -> ServiceSettings:
        """The settings of one service (gateway, worker, priority or loadtest)."""
        value = getattr(self, name)
        assert isinstance(value, ServiceSettings), name
        return value

    @classmethod
    def from_strings(cls, stack: str, raw: Mapping[str, str]) -> StackSettings:
        """Build from ``{camelCaseKey: value}`` as Pulumi config holds them (strings)."""
        known = {camel(f.name): f for f in dataclasses.fields(cls) if f.name != "stack"}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SettingsError(f"unknown config keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {"stack": stack}
        for key, fld in known.items():
            if key not in raw:
                continue
            if key in _SECTIONS:
                values[fld.name] = _section(key, raw[key])
            else:
                values[fld.name] = _coerce(key, raw[key], hints[fld.name])
        for required in ("domainName", "hostedZoneName", "imageTag"):
            if not raw.get(required):
                raise SettingsError(f"missing required config key {PROJECT}:{required}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming the first inconsistent setting."""
        _check(
            self.shutdown_timeout_s < self.stop_timeout_s <= FARGATE_MAX_STOP_TIMEOUT_S,
            "stopTimeoutS must be above shutdownTimeoutS and at most "
            f"{FARGATE_MAX_STOP_TIMEOUT_S} (Fargate's limit)",
        )
        _check(2 <= self.network.az_count <= 6, "network.azCount must be 2..6")
        _check(
            1 <= self.network.nat_gateways <= self.network.az_count,
            "network.natGateways must be 1..azCount",
        )
        _check(
            self.documentdb.shard_capacity in ELASTIC_SHARD_CAPACITY,
            f"documentdb.shardCapacity must be one of {ELASTIC_SHARD_CAPACITY}",
        )
        _check(
            self.mysql.read_replicas == 0 or self.mysql.backup_retention_days >= 1,
            "mysql.backupRetentionDays must be >= 1 when there are read replicas",
        )
        for name in IMAGES:
            svc = self.service(name)
            _check(svc.cpu in FARGATE_CPU, f"{name}.cpu must be one of {FARGATE_CPU}")
            _check(
                svc.min_tasks <= svc.desired <= svc.max_tasks
                and svc.prewarm_tasks <= svc.max_tasks,
                f"{name}: minTasks <= desired <= maxTasks and prewarm <= maxTasks",
            )
            leaked = sorted(set(svc.environment) & set(SECRET_ENV))
            _check(not leaked, f"{name}.environment must not set secrets: {leaked}")
            unknown = sorted(set(svc.environment) - KNOWN_ENV)
            _check(not unknown, f"{name}.environment: not a service setting: {unknown}")
        for name in SERVICES:
            _check(self.service(name).min_tasks >= 1, f"{name}.minTasks must be >= 1")


def camel(snake: str) -> str:
    """``max_tasks`` -> ``maxTasks``."""
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


#: The object-valued keys and their defaults (the field defaults of StackSettings).
_SECTIONS: dict[str, object] = {
    camel(f.name): f.default
    for f in dataclasses.fields(StackSettings)
    if dataclasses.is_dataclass(f.default)
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def _section(key: str, raw: str) -> object:
    """Override the section's defaults with the keys of its JSON object."""
    default = _SECTIONS[key]
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{PROJECT}:{key} must be an object") from e
    if not isinstance(given, dict):
        raise SettingsError(f"{PROJECT}:{key} must be an object")
    assert dataclasses.is_dataclass(default)
    assert not isinstance(default, type)
    fields = {camel(f.name): f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SettingsError(f"unknown keys in {PROJECT}:{key}: {', '.join(unknown)}")
    hints = typing.get_type_hints(type(default))
    changes = {
        fields[name]: _coerce(f"{key}.{name}", value, hints[fields[name]])
        for name, value in given.items()
    }
    return dataclasses.replace(default, **changes)


def _coerce(key: str, value: object, hint: object) -> object:
    """``value`` (a config string or a JSON value) as the field's type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise SettingsError(f"{key} must be one of {typing.get_args(hint)}, not {value!r}")
        return value
    if hint is str:
        return str(value)
    if origin is dict:
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise SettingsError(f"{key} must be an object")
        return {str(k): str(v) for k, v in parsed.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise SettingsError(f"{key} must be true or false, not {value!r}")
    if hint in (int, float):
        try:
            return typing.cast(type, hint)(value)
        except (TypeError, ValueError) as e:
            raise SettingsError(f"{key} must be a number, not {value!r}") from e
    raise SettingsError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover
