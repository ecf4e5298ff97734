"""Helpers of the pipeline tests (consumer, worker process, live-first, fan-out).

Everything here talks to real servers on 127.0.0.1: a loopback TCP proxy to cut a
database off, a fan-out inbox (a real ZeroMQ SUB socket registered like a gateway), and
running a consumer service in this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from chat.config import Settings
from chat.fanout import GatewayRegistry, Subscriber
from chat.ids import new_message_id
from chat.keys import KeySpace
from chat.localstack import free_port
from chat.pipeline import ConsumerService
from chat.serialization import MessageFrame, Priority, QueuedMessage, decode_message_frame
from chat.storage.sql import Directory
from chat.streams import Accepted, Enqueuer
from tests.conftest import UNIT

PROBE = b'{"probe":true}'


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = 15 * UNIT,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def keyspace(settings: Settings) -> KeySpace:
    return KeySpace(settings.redis_key_prefix, settings.stream_partitions)


def queued(
    chat_id: int,
    sender_id: int,
    *,
    text: str = "hello",
    priority: Priority = "bulk",
    attachments: Iterable[str] = (),
) -> QueuedMessage:
    return QueuedMessage(
        id=new_message_id(),
        chat_id=chat_id,
        sender_id=sender_id,
        text=text,
        attachments=list(attachments),
        priority=priority,
    )


async def enqueue(redis: Any, settings: Settings, messages: list[QueuedMessage]) -> list[Accepted]:
    """Enqueue through the gateway's script; every message must be accepted."""
    enq = Enqueuer(redis, keyspace(settings), idempotency_ttl_s=600, max_len=10_000_000)
    out: list[Accepted] = []
    for i in range(0, len(messages), 500):
        results = await enq.enqueue(messages[i : i + 500])
        assert all(isinstance(r, Accepted) for r in results)
        out += [r for r in results if isinstance(r, Accepted)]
    return out


async def make_users(directory: Directory, *names: str) -> list[int]:
    tag = new_message_id()
    return [
        await directory.create_user(
            email=f"{name.lower()}-{tag}@example.test", password_hash="x", name=name, kind="human"
        )
        for name in names
    ]


async def pending_count(redis: Any, settings: Settings, priority: Priority = "bulk") -> int:
    """Entries delivered to the group and not yet acknowledged, over every partition."""
    group = "priority" if priority == "live" else "worker"
    total = 0
    for part in keyspace(settings).all():
        key = part.stream(priority)
        if await redis.exists(key):
            with contextlib.suppress(Exception):  # no group yet
                total += int((await redis.xpending(key, group))["pending"])
    return total


async def unacked(redis: Any, settings: Settings, priority: Priority = "bulk") -> int:
    """Entries the group has not acknowledged yet (undelivered + pending); a stream whose
    group does not exist yet counts whole."""
    group = "priority" if priority == "live" else "worker"
    total = 0
    for part in keyspace(settings).all():
        key = part.stream(priority)
        if not await redis.exists(key):
            continue
        groups = {g["name"]: g for g in await redis.xinfo_groups(key)}
        info = groups.get(group.encode())
        if info is None:
            total += await redis.xlen(key)
        else:
            total += int(info["pending"]) + int(info["lag"])
    return total


async def stream_len(redis: Any, settings: Settings, priority: Priority = "bulk") -> int:
    return sum([await redis.xlen(p.stream(priority)) for p in keyspace(settings).all()])


async def dead_letters(redis: Any, settings: Settings) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    for part in keyspace(settings).all():
        out += [fields for _, fields in await redis.xrange(part.dead)]
    return out


@contextlib.asynccontextmanager
async def running(
    service: ConsumerService, *, expect_crash: bool = False
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a consumer service in this loop; on exit stop it, await it and close it.

    A service that crashed fails the test (unless ``expect_crash``); one that does not
    stop within the drain bound is cancelled and fails it too.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=10 * UNIT)
        if not done:
            task.cancel()
            await asyncio.wait([task])
        await service.close()
    assert done, "consumer did not stop within its drain bound"
    error = task.exception()
    if error is not None and not expect_crash:
        raise error


class Inbox:
    """A gateway's fan-out side: a bound SUB socket announced in the registry."""

    def __init__(self, redis: Any, settings: Settings, *, ttl_s: float | None = None) -> None:
        self.registry = GatewayRegistry(
            redis, keyspace(settings), ttl_s or settings.fanout_registry_ttl_s
        )
        self.subscriber = Subscriber(
            self.registry, bind_host="127.0.0.1", port=0, advertise_host="127.0.0.1"
        )
        self.frames: list[MessageFrame] = []
        self.raw: list[tuple[int, bytes]] = []
        self.probed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _deliver(self, chat_id: int, payload: bytes) -> None:
        if payload == PROBE:
            self.probed.set()
            return
        self.raw.append((chat_id, payload))
        self.frames.append(decode_message_frame(payload))

    def of_chat(self, chat_id: int) -> list[MessageFrame]:
        return [f for f in self.frames if f.chat_id == chat_id]

    async def __aenter__(self) -> Inbox:
        await self.registry.announce(self.subscriber.endpoint)
        self._task = asyncio.create_task(self.subscriber.run(self._stop, self._deliver))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.registry.withdraw(self.subscriber.endpoint)
        self.subscriber.close()

    async def joined(self, publish: Callable[[int, bytes], None], chat_id: int) -> None:
        """Publish probes on ``chat_id`` until one arrives: the subscription has reached
        the publisher (ZeroMQ's slow-joiner window is over)."""
        self.probed.clear()

        async def arrived() -> bool:
            publish(chat_id, PROBE)
            await asyncio.sleep(0.02)
            return self.probed.is_set()

        await wait_until(arrived, what=f"fan-out subscription to chat {chat_id}")


class TcpProxy:
    """A loopback TCP proxy that can be cut (every connection closed, new ones refused)
    and restored on the same port: a database outage without touching the database."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        for p in pumps:
            p.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
