"""Fan-out over real ZeroMQ sockets on loopback with the gateway registry in real Redis:
per-chat filtering, discovery of late gateways, and dropping of silent ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from chat.config import Settings
from chat.fanout import REFRESH_S, GatewayRegistry, Publisher
from chat.serialization import MessageFrame, encode_frame
from tests.conftest import UNIT
from tests.integration.pipeline_support import Inbox, keyspace, wait_until


def frame(chat_id: int, seq: int) -> bytes:
    return encode_frame(
        MessageFrame(
            id=f"m-{chat_id}-{seq}",
            chat_id=chat_id,
            seq=seq,
            ts=1_700_000_000_000 + seq,
            sender_id=1,
            sender_name="Ann",
            text=f"{chat_id}/{seq}",
            attachments=[],
            priority="bulk",
        )
    )


@contextlib.asynccontextmanager
async def publishing(redis: Any, settings: Settings) -> AsyncIterator[Publisher]:
    """A publisher running its registry refresh loop, as in a worker."""
    registry = GatewayRegistry(redis, keyspace(settings), settings.fanout_registry_ttl_s)
    publisher = Publisher(registry)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        yield publisher
    finally:
        stop.set()
        await task
        publisher.close()


async def test_subscriber_gets_its_chats_and_not_others(redis: Any, settings: Settings) -> None:
    """A gateway subscribed to chat A receives A's frames in order and none of B's."""
    async with Inbox(redis, settings) as inbox, publishing(redis, settings) as publisher:
        inbox.subscriber.subscribe(41)
        await wait_until(lambda: inbox.subscriber.endpoint in publisher.peers, what="peer")
        await inbox.joined(publisher.publish, 41)
        for seq in (1, 2, 3):
            publisher.publish(42, frame(42, seq))  # chat B: filtered at the publisher
            publisher.publish(41, frame(41, seq))
        publisher.publish(412, frame(412, 1))  # a topic that 41| is a prefix of, almost
        await wait_until(lambda: len(inbox.frames) >= 3, what="chat A's frames")
        await asyncio.sleep(0.2)  # anything wrongly delivered would have arrived by now
    assert [(f.chat_id, f.seq) for f in inbox.frames] == [(41, 1), (41, 2), (41, 3)]


async def test_gateway_started_later_is_found_through_the_registry(
    redis: Any, settings: Settings
) -> None:
    """A publisher already running finds a gateway that registers after it, with no
    restart, within one registry refresh."""
    async with publishing(redis, settings) as publisher:
        await asyncio.sleep(0.1)
        assert publisher.peers == frozenset()
        async with Inbox(redis, settings) as inbox:
            inbox.subscriber.subscribe(7)
            await wait_until(
                lambda: inbox.subscriber.endpoint in publisher.peers,
                within=REFRESH_S * 3 * UNIT,
                what="the publisher to connect to the new gateway",
            )
            await inbox.joined(publisher.publish, 7)
            publisher.publish(7, frame(7, 1))
            await wait_until(lambda: len(inbox.frames) == 1, what="the frame")
    assert inbox.frames[0].text == "7/1"


async def test_gateway_whose_heartbeat_stops_is_dropped(redis: Any, settings: Settings) -> None:
    """A gateway that stops refreshing its registry entry (crashed) is dropped by the
    publisher once its entry expires, while a gateway that keeps beating stays."""
    registry = GatewayRegistry(redis, keyspace(settings), ttl_s=0.5)
    publisher = Publisher(registry)
    try:
        alive = Inbox(redis, settings, ttl_s=0.5)
        dead_endpoint = "tcp://127.0.0.1:1"  # announced once, then silent
        async with alive:
            stop = asyncio.Event()
            beating = asyncio.create_task(alive.subscriber.heartbeat(stop))
            try:
                await registry.announce(dead_endpoint)
                await publisher.refresh()
                assert {dead_endpoint, alive.subscriber.endpoint} <= publisher.peers
                await asyncio.sleep(0.8)
                await publisher.refresh()
                assert dead_endpoint not in publisher.peers
                assert alive.subscriber.endpoint in publisher.peers
            finally:
                stop.set()
                await beating
    finally:
        publisher.close()
