"""A real local stack for the load-test tests: gateway, worker and priority as child
processes (:class:`chat.localstack.LocalStack`) on the CI servers, isolated by a fresh
Redis key prefix and Mongo database, on a free port. One stack serves the whole package
(booting it is the slow part); the killed-worker test restarts the worker it killed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from pymongo import MongoClient

from chat.config import Settings, load_settings
from chat.localstack import LocalStack, free_port
from tests.conftest import UNIT


@dataclass
class RunningStack:
    local: LocalStack
    settings: Settings
    log_path: Path

    @property
    def url(self) -> str:
        return self.local.gateway_url

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="package")
def stack(
    redis_url: str, mongo_url: str, sql_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    tag = secrets.token_hex(4)
    tmp = tmp_path_factory.mktemp("loadtest-stack")
    env = {
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": f"chat_lt_{tag}",
        "SQL_URL": sql_url,
        "SQL_MIGRATE_ON_START": "false",  # the session fixture migrated it
        "REDIS_KEY_PREFIX": f"lt{tag}:",
        "STREAM_PARTITIONS": "4",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(free_port()),
        "JWT_SECRET": "loadtest-secret-" + "x" * 20,
        "CLAIM_IDLE_MS": "1000",  # the killed worker's entries are reclaimed within ~1 s
        "BLOCK_MS": "200",
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "WARNING",
        "S3_LOCAL_DIR": str(tmp / "attachments"),
    }
    log_path = tmp / "stack.log"
    with log_path.open("ab") as log:
        local = LocalStack(local_dir=tmp / "local", env=env, output=log)
        try:
            with local.running():
                local.wait_ready(timeout=60 * UNIT)
                yield RunningStack(local, load_settings(local.resolved), log_path)
        finally:
            _cleanup(env, redis_url, mongo_url)


def _cleanup(env: dict[str, str], redis_url: str, mongo_url: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(env["MONGO_DB"])
    finally:
        client.close()
    r = redis_sync.Redis.from_url(redis_url)
    try:
        keys = list(r.scan_iter(match=env["REDIS_KEY_PREFIX"] + "*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
    finally:
        r.close()
