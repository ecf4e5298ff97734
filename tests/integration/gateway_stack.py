"""Support for the gateway's contract and browser tests: a real gateway + worker + priority
(``python -m …`` child processes started by :class:`chat.localstack.LocalStack`) on the
test servers, isolated by a fresh Redis key prefix and Mongo database, plus thin HTTP and
WebSocket clients that speak the contracts (no mocks anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis as redis_sync
from pymongo import MongoClient

from chat.localstack import SERVICES, LocalStack, free_port
from tests.conftest import UNIT

JWT_SECRET = "gateway-contract-secret-" + "x" * 16
_emails = itertools.count(1)


@dataclass
class Stack:
    """The running processes and how to reach them."""

    local: LocalStack
    env: dict[str, str]
    log_path: Path
    port: int
    fanout_ok: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start_gateway(self, **extra_env: str) -> None:
        self.local.start_service("gateway", **extra_env)
        self.local.wait_ready(timeout=60 * UNIT)

    def stop_gateway(self, *, timeout: float = 30) -> int | None:
        return self.local.stop_service("gateway", timeout=timeout * UNIT)


@contextlib.contextmanager
def running_stack(
    redis_url: str,
    mongo_url: str,
    sql_url: str,
    tmp: Path,
    *,
    services: Sequence[str] = SERVICES,
    **overrides: str,
) -> Iterator[Stack]:
    """Start the services against the test servers; stop them and drop their data after."""
    tag = secrets.token_hex(4)
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "MONGO_DB": f"chat_gw_{tag}",
        "SQL_URL": sql_url,
        "SQL_MIGRATE_ON_START": "false",  # the session fixture migrated it
        "REDIS_KEY_PREFIX": f"gw{tag}:",
        "STREAM_PARTITIONS": "4",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "FANOUT_PORT": "0",
        "HEALTH_PORT": "0",
        "JWT_SECRET": JWT_SECRET,
        "S3_LOCAL_DIR": str(tmp / "attachments"),
        "LOCAL_DIR": str(tmp / "local"),
        "LOG_FORMAT": "console",
        "BLOCK_MS": "200",
        "SHUTDOWN_TIMEOUT_S": "10",
        **overrides,
    }
    log_path = tmp / "stack.log"
    with log_path.open("ab") as output:
        local = LocalStack(local_dir=tmp / "local", env=env, services=services, output=output)
        stack = Stack(local=local, env=env, log_path=log_path, port=port)
        try:
            local.start_stores()
            local.start_services()
            local.wait_ready(timeout=60 * UNIT)
            yield stack
        finally:
            local.stop()
            _drop_data(env)


def _drop_data(env: dict[str, str]) -> None:
    client = redis_sync.Redis.from_url(env["REDIS_URL"])
    try:
        keys = list(client.scan_iter(match=env["REDIS_KEY_PREFIX"] + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()
    mongo: MongoClient[dict[str, Any]] = MongoClient(env["MONGO_URL"])
    try:
        mongo.drop_database(env["MONGO_DB"])
    finally:
        mongo.close()


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class User:
    user_id: int
    token: str
    email: str
    name: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """HTTP API v1, returning (status, json body)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url

    async def call(
        self, method: str, path: str, *, user: User | None = None, body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if user is not None:
            headers.update(user.auth)
        async with self.session.request(
            method, self.base + path, json=body, headers=headers, **kw
        ) as resp:
            data = await resp.read()
            try:
                parsed = json.loads(data) if data else None
            except ValueError:
                parsed = data.decode(errors="replace")
            return resp.status, parsed

    async def signup(self, name: str = "user", kind: str = "human") -> User:
        email = f"{name.lower()}-{secrets.token_hex(3)}-{next(_emails)}@example.test"
        status, body = await self.call(
            "POST",
            "/api/v1/auth/signup",
            body={"email": email, "password": "correct horse", "name": name, "kind": kind},
        )
        assert status == 201, body
        return User(user_id=body["user_id"], token=body["token"], email=email, name=name)

    async def create_chat(self, owner: User, members: Sequence[User], title: str = "t") -> int:
        status, body = await self.call(
            "POST",
            "/api/v1/chats",
            user=owner,
            body={"title": title, "member_ids": [m.user_id for m in members]},
        )
        assert status == 201, body
        return int(body["chat_id"])

    async def messages(self, user: User, chat_id: int, **params: int) -> list[dict[str, Any]]:
        status, body = await self.call(
            "GET", f"/api/v1/chats/{chat_id}/messages", user=user, params=params
        )
        assert status == 200, body
        return list(body["messages"])

    async def wait_persisted(
        self, user: User, chat_id: int, count: int, wait_s: float = 30 * UNIT
    ) -> list[dict[str, Any]]:
        """Poll until ``count`` messages of the chat are in MongoDB."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            found = await self.messages(user, chat_id, after_seq=0, limit=200)
            if len(found) >= count:
                return found
            assert asyncio.get_running_loop().time() < deadline, f"{len(found)}/{count} stored"
            await asyncio.sleep(0.1)


@dataclass
class Ws:
    """A protocol v1 client on a real WebSocket."""

    ws: aiohttp.ClientWebSocketResponse
    hello: dict[str, Any]
    backlog: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, stack_url: str, user: User) -> Ws:
        ws = await session.ws_connect(f"{stack_url}?token={user.token}", autoping=True)
        first = json.loads(await ws.receive_str(timeout=10 * UNIT))
        assert first["type"] == "hello", first
        return cls(ws=ws, hello=first)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def recv(self, wait_s: float = 10 * UNIT) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        msg = await self.ws.receive(timeout=wait_s)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type} {msg.data} {msg.extra}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(
        self, match: Callable[[dict[str, Any]], bool], wait_s: float = 20 * UNIT
    ) -> dict[str, Any]:
        """The first frame matching; others are kept for later ``recv``/``expect``."""
        for i, frame in enumerate(self.backlog):
            if match(frame):
                return self.backlog.pop(i)
        skipped: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no matching frame; got {skipped[-5:]}")
                msg = await self.ws.receive(timeout=remaining)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"socket closed: {msg.type} {msg.data}")
                got: dict[str, Any] = json.loads(msg.data)
                if match(got):
                    return got
                skipped.append(got)
        finally:
            self.backlog.extend(skipped)

    async def messages(
        self, chat_id: int, count: int, wait_s: float = 30 * UNIT
    ) -> list[dict[str, Any]]:
        got = []
        for _ in range(count):
            got.append(
                await self.expect(
                    lambda f: f["type"] == "message" and f["chat_id"] == chat_id, wait_s
                )
            )
        return got

    async def close(self) -> None:
        await self.ws.close()


def send_frame(chat_id: int, text: str, client_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "send",
        "chat_id": chat_id,
        "client_id": client_id or secrets.token_hex(8),
        "text": text,
    }


async def wait_fanout(session: aiohttp.ClientSession, stack: Stack) -> None:
    """Until both publishers (priority for live, worker for bulk) reach this gateway:
    they find it in the registry within a couple of seconds of its start."""
    api = Api(session, stack.base_url)
    for kind in ("human", "loadtest"):
        user = await api.signup("warmup", kind=kind)
        chat_id = await api.create_chat(user, [])
        ws = await Ws.connect(session, stack.ws_url, user)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60 * UNIT
            while True:
                await ws.send(send_frame(chat_id, "warmup"))
                try:
                    await ws.expect(lambda f: f["type"] == "message", wait_s=0.5 * UNIT)
                    break
                except TimeoutError:
                    if loop.time() > deadline:
                        raise AssertionError(
                            f"fan-out never reached the gateway\n{stack.log_tail()}"
                        ) from None
        finally:
            await ws.close()
