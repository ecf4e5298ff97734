"""Settings: one frozen, typed object read from the environment once, at startup.

Every field has a default, an environment variable (the field name in upper case) and a
one-line description; a bad value fails at boot naming the variable. Nothing below a
service's ``main()`` reads ``os.environ``: the object is passed down.

The configuration reference (docs/configuration.md) is generated from this class by
``python -m chat.config --markdown``; a test fails if the file is stale.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from chat.errors import ConfigError

#: Printed in place of a secret's value anywhere settings are shown.
REDACTED = "**********"


class Settings(BaseSettings):
    """Everything a gateway, worker or priority process can be told."""

    # env_ignore_empty: `make` exports every settings variable, empty when unset
    # (Makefile `export $(SETTINGS)`); an empty value means "default", as in load_settings.
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # --- data stores -------------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (rediss:// for TLS); may carry the auth token, so it is a secret.",
    )
    redis_cluster: bool = Field(
        False, description="Talk Redis Cluster protocol (ElastiCache cluster mode enabled)."
    )
    redis_key_prefix: str = Field(
        "",
        description="Prefix of every Redis key; isolates tests and side-by-side deployments.",
    )
    mongo_url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017/"),
        description="MongoDB / DocumentDB URL; may carry credentials, so it is a secret.",
    )
    mongo_db: str = Field("chat", description="MongoDB database holding the messages.")
    sql_url: SecretStr = Field(
        SecretStr("sqlite+aiosqlite:///.local/chat.db"),
        description="SQLAlchemy async URL of users/chats (mysql+aiomysql://… in AWS).",
    )
    sql_migrate_on_start: bool = Field(
        True, description="Run the SQL migrations (alembic upgrade head) when the gateway boots."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint override (moto server locally); unset means AWS."
    )
    s3_bucket: str = Field("chat-attachments", description="Bucket holding attachments.")
    s3_local_dir: str | None = Field(
        None,
        description="Store attachments in this directory instead of S3 (embedded local default).",
    )
    aws_region: str = Field("us-east-1", description="AWS region for S3 and CloudWatch.")

    # --- streams -----------------------------------------------------------------------
    stream_partitions: int = Field(
        16, ge=1, le=16384, description="Partitions: crc32(str(chat_id)) mod this (contract)."
    )
    stream_max_len: int = Field(
        2_000_000,
        ge=1000,
        description="Backlog per partition stream past which enqueue answers 'unavailable'.",
    )
    idempotency_ttl_s: int = Field(
        600, ge=1, description="How long a client_id's ack is remembered for resends."
    )

    # --- gateway -----------------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Gateway HTTP/WebSocket listen address.")
    gateway_port: int = Field(8080, ge=0, le=65535, description="Gateway listen port.")
    jwt_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC secret signing tokens; empty means a random one per process (dev only).",
    )
    jwt_ttl_s: int = Field(86400, ge=60, description="Token lifetime in seconds.")
    allowed_origins: str = Field(
        "",
        description="Comma-separated browser Origins allowed on /ws; empty allows same host only.",
    )
    max_text_bytes: int = Field(4096, ge=1, description="Longest message text, UTF-8 bytes.")
    max_frame_bytes: int = Field(
        65536, ge=1024, description="Largest WebSocket frame; larger closes with 1009."
    )
    live_rate_per_s: float = Field(
        5.0, gt=0, description="Sustained live sends per user per second before demotion to bulk."
    )
    live_burst: int = Field(20, ge=1, description="Burst of live sends allowed above the rate.")
    ws_flood_per_s: float = Field(
        200.0, gt=0, description="Frames per second per connection past which it closes (1008)."
    )
    ws_send_queue: int = Field(
        1024, ge=1, description="Frames buffered per connection; a full buffer disconnects."
    )
    shutdown_timeout_s: float = Field(
        20.0, gt=0, description="Drain deadline on SIGTERM; keep below ECS stopTimeout."
    )
    reconnect_after_ms: int = Field(
        1000, ge=0, description="Delay the gateway's `reconnect` frame asks clients to wait."
    )
    ws_heartbeat_s: float = Field(
        30.0, gt=0, description="WebSocket ping interval; a peer silent for half of it is dropped."
    )
    membership_cache_ttl_s: float = Field(
        60.0,
        gt=0,
        description="Lifetime of a cached member list (pub/sub invalidation usually ends it).",
    )
    bulk_signup_max: int = Field(
        1000,
        ge=0,
        description="Accounts per POST /api/v1/auth/bulk-signup (load-test provisioning); 0 = off.",
    )

    # --- fan-out -----------------------------------------------------------------------
    fanout_port: int = Field(
        5560, ge=0, le=65535, description="Gateway's ZeroMQ SUB bind port (0 picks one)."
    )
    fanout_advertise_host: str = Field(
        "127.0.0.1",
        description="Address publishers use to reach this gateway; 'ecs' reads the task IP.",
    )
    fanout_registry_ttl_s: float = Field(
        15.0, gt=0, description="A gateway missing heartbeats this long is dropped."
    )

    # --- consumers (worker, priority) ----------------------------------------------------
    consumer_name: str = Field(
        "", description="Consumer name in the group; empty means hostname-pid."
    )
    batch: int = Field(
        500, ge=1, description="Worker (bulk): entries read per XREADGROUP per partition."
    )
    block_ms: int = Field(
        1000,
        ge=1,
        description="Worker (bulk): XREADGROUP BLOCK; bounds shutdown latency of an idle consumer.",
    )
    claim_idle_ms: int = Field(
        30000,
        ge=100,
        description="Worker (bulk): visibility timeout before another consumer reclaims.",
    )
    bulk_max_inflight_inserts: int = Field(
        1,
        ge=0,
        description="Worker (bulk): Mongo inserts in flight per process (0 = one per partition"
        " reader); each slot adds up to one insert to every live insert's wait.",
    )
    bulk_insert_budget_ms: float = Field(
        25.0,
        ge=0,
        description="Worker (bulk): target duration of one insert, the batch size adapts (AIMD)"
        " to it; lower shortens live waits, costs bulk throughput (0 = fixed BATCH).",
    )
    bulk_min_batch: int = Field(
        20, ge=1, description="Worker (bulk): floor (and start) of the adaptive batch size."
    )
    bulk_yield_target_ms: float = Field(
        10.0,
        ge=0,
        description="Worker (bulk): while live inserts take longer than this on average, the"
        " worker leaves the database idle part of the time (AIMD share; 0 = never yield)."
        " Set ~2x the writer's uncontended insert time.",
    )
    bulk_min_db_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Worker (bulk): the least share of wall time its inserts keep while"
        " yielding to live (bulk always drains).",
    )
    live_pressure_interval_ms: int = Field(
        250,
        ge=10,
        description="How often priority reports its mean insert time and workers read it.",
    )
    live_batch: int = Field(
        50, ge=1, description="Priority (live): entries per read; small keeps latency flat."
    )
    live_block_ms: int = Field(
        150, ge=1, description="Priority (live): XREADGROUP BLOCK; bounds its shutdown latency."
    )
    live_claim_idle_ms: int = Field(
        5000,
        ge=100,
        description="Priority (live): visibility timeout; a dead consumer's entries wait this.",
    )
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries before an entry goes to the dead-letter stream."
    )
    health_host: str = Field(
        "127.0.0.1",
        description="Worker/priority health listen address (0.0.0.0 in a container to scrape).",
    )
    health_port: int = Field(
        8081, ge=0, le=65535, description="Worker/priority /healthz /readyz /metrics port."
    )
    cloudwatch_namespace: str | None = Field(
        None, description="Publish stream lag to this CloudWatch namespace (AWS only)."
    )

    # --- load test ---------------------------------------------------------------------
    loadtest_target_url: str | None = Field(
        None,
        description="Gateway base URL the load generator targets (set on its ECS task).",
    )

    # --- process ---------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["json", "console"] = Field("json", description="Log renderer.")
    local_dir: str = Field(".local", description="Where local runs keep data and heartbeats.")

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed, validated like the original."""
        data = self.model_dump()
        data.update(changes)
        return type(self).model_validate(data)

    def effective_jwt_secret(self) -> str:
        """The signing secret; a random per-process one when none is configured."""
        value = self.jwt_secret.get_secret_value()
        return value or _DEV_JWT_SECRET


_DEV_JWT_SECRET = secrets.token_urlsafe(32)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read the settings once; raise :class:`ConfigError` naming the bad variable."""
    import os

    env = dict(os.environ if environ is None else environ)
    fields = Settings.model_fields
    values: dict[str, object] = {}
    for name in fields:
        raw = env.get(name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    values.update(overrides)
    try:
        # model_validate (not the env source) so `environ` is honoured exactly.
        return Settings.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(
            f"{str(err['loc'][0]).upper()}: {err['msg']}" for err in e.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from e


def reference_markdown() -> str:
    """The configuration reference, generated from :class:`Settings`."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m chat.config --markdown` from `libs/chat/config.py`;",
        "do not edit by hand. Every setting is an environment variable.",
        "",
        "| variable | default | description |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = default.get_secret_value() or "(empty)"
        elif default is None:
            shown = "(unset)"
        else:
            shown = str(default)
        lines.append(f"| `{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised by a test through subprocess
    if "--markdown" in sys.argv:
        sys.stdout.write(reference_markdown())
    else:
        for key, value in load_settings().model_dump().items():
            print(f"{key.upper()}={REDACTED if isinstance(value, SecretStr) else value}")
