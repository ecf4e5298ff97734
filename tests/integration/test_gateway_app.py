"""The gateway app in this process (``create_app``) on the real Redis, MongoDB-wire server
and SQL, for behaviour that needs special settings or a look inside: backpressure from a
full queue, slow consumers, membership cache invalidation across gateways."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestServer

from chat import metrics
from chat.config import Settings
from chat.fanout import topic
from chat.keys import KeySpace
from gateway import appkeys, cursors
from gateway import ws as gateway_ws
from gateway.app import create_app
from tests.conftest import UNIT
from tests.integration.gateway_stack import Api, Ws, send_frame


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[TestServer, str]]:
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_full_backlog_answers_unavailable_and_a_later_resend_is_accepted(
    settings: Settings, redis: Any, message_store: Any, http: aiohttp.ClientSession
) -> None:
    """Over STREAM_MAX_LEN the send gets `unavailable` (WS) / 503 (HTTP) and nothing is
    stored; once the backlog drains, the resend with the same client_id is acked as seq 1."""
    settings = settings.with_overrides(stream_max_len=1000, sql_migrate_on_start=False)
    async with serve(settings) as (_, base):
        api = Api(http, base)
        alice = await api.signup("Alice")
        chat_id = await api.create_chat(alice, [])
        live = KeySpace(settings.redis_key_prefix, settings.stream_partitions).for_chat(chat_id)
        pipe = redis.pipeline(transaction=False)
        for _ in range(1000):
            pipe.xadd(live.live, {"m": b"x", "s": 0, "t": 0})
        await pipe.execute()
        ws = await Ws.connect(http, f"{base}/ws", alice)
        await ws.send(send_frame(chat_id, "hi", "retry-me"))
        error = await ws.expect(lambda f: f["type"] == "error")
        assert (error["code"], error["client_id"]) == ("unavailable", "retry-me")
        status, body = await api.call(
            "POST", f"/api/v1/chats/{chat_id}/messages", user=alice, body={"text": "hi"}
        )
        assert (status, body["error"]["code"]) == (503, "unavailable")
        await redis.delete(live.live)
        await ws.send(send_frame(chat_id, "hi", "retry-me"))
        ack = await ws.expect(lambda f: f["type"] == "ack")
        assert (ack["client_id"], ack["seq"]) == ("retry-me", 1)
        await ws.close()


async def test_hello_is_the_first_frame_even_when_a_message_arrives_during_the_handshake(
    settings: Settings,
    redis: Any,
    message_store: Any,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session is attached to its chats before ``last_seq`` is read (so nothing falls
    between hello and live delivery); a message fanned out in that gap is held back and
    follows ``hello`` instead of preceding it."""
    settings = settings.with_overrides(sql_migrate_on_start=False)
    async with serve(settings) as (server, base):
        api = Api(http, base)
        alice = await api.signup("Alice")
        chat_id = await api.create_chat(alice, [])
        hub = server.app[appkeys.HUB]
        real = cursors.last_seqs

        async def deliver_first(*args: Any) -> dict[int, int]:
            hub.deliver(chat_id, b'{"type":"message","chat_id":%d,"seq":7}' % chat_id)
            return await real(*args)

        monkeypatch.setattr(gateway_ws, "last_seqs", deliver_first)
        ws = await Ws.connect(http, f"{base}/ws", alice)  # asserts hello comes first
        assert [c["chat_id"] for c in ws.hello["chats"]] == [chat_id]
        held = await ws.expect(lambda f: f["type"] == "message")
        assert (held["chat_id"], held["seq"]) == (chat_id, 7)
        await ws.close()


async def test_slow_reader_is_disconnected_with_1013_while_others_keep_receiving(
    settings: Settings, redis: Any, message_store: Any, http: aiohttp.ClientSession
) -> None:
    """A member that stops reading fills its bounded buffer and is closed with 1013; the
    fan-out never waits for it and a reading member still gets every message."""
    settings = settings.with_overrides(ws_send_queue=8, sql_migrate_on_start=False)
    async with serve(settings) as (server, base):
        app = server.app
        api = Api(http, base)
        slow_user, fast_user = await api.signup("Slow"), await api.signup("Fast")
        chat_id = await api.create_chat(slow_user, [fast_user])
        slow = await Ws.connect(http, f"{base}/ws", slow_user)
        fast = await Ws.connect(http, f"{base}/ws", fast_user)
        ctx = zmq.asyncio.Context.instance()
        pub = ctx.socket(zmq.PUB)
        pub.connect(app[appkeys.LIFECYCLE].fanout_endpoint)
        try:
            # Slow joiner: publish probes until the subscription has propagated.
            for _ in range(200):
                await pub.send_multipart([topic(chat_id), b'{"type":"message","seq":0}'])
                with contextlib.suppress(TimeoutError):
                    await fast.expect(lambda f: f["type"] == "message", wait_s=0.05)
                    break
            received = 0

            async def read_fast() -> None:
                nonlocal received
                while True:
                    msg = await fast.ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        return
                    received += 1
                    if '"last"' in msg.data:
                        return

            reader = asyncio.ensure_future(read_fast())
            before = metrics.SLOW_CLIENT_CLOSES._value.get()
            payload = json.dumps({"type": "message", "pad": "x" * 60_000}).encode()
            sent = 0
            hub = app[appkeys.HUB]
            while not any(c.closing for c in hub.connections) and sent < 2000:
                await pub.send_multipart([topic(chat_id), payload])
                sent += 1
                await asyncio.sleep(0.001)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10 * UNIT
            while len(hub) == 2 and loop.time() < deadline:  # noqa: ASYNC110 - session winds down
                await asyncio.sleep(0.02)
            assert len(hub) == 1, "the slow reader was never disconnected"
            assert metrics.SLOW_CLIENT_CLOSES._value.get() == before + 1
            # The slow client finds its buffered frames, then the close code.
            while True:
                msg = await slow.ws.receive(timeout=20 * UNIT)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 1013
            await pub.send_multipart([topic(chat_id), b'{"type":"message","last":true}'])
            await asyncio.wait_for(reader, 20 * UNIT)
            assert received == sent + 1
        finally:
            pub.close(linger=0)
            await fast.close()


async def test_members_added_on_another_gateway_invalidate_this_gateways_cache(
    settings: Settings, redis: Any, message_store: Any, http: aiohttp.ClientSession
) -> None:
    """Gateway B caches a chat's members; adding a member through gateway A publishes an
    invalidation, so B lets the new member send at once."""
    settings = settings.with_overrides(sql_migrate_on_start=False, membership_cache_ttl_s=3600)
    async with serve(settings) as (_, base_a), serve(settings) as (server_b, base_b):
        api_a, api_b = Api(http, base_a), Api(http, base_b)
        membership_b = server_b.app[appkeys.MEMBERSHIP]
        heard: asyncio.Queue[int] = asyncio.Queue()

        async def hear(chat: int, _members: frozenset[int]) -> None:
            heard.put_nowait(chat)

        membership_b.on_change(hear)
        alice, bob = await api_a.signup("Alice"), await api_a.signup("Bob")
        chat_id = await api_a.create_chat(alice, [])
        # B hears of the creation asynchronously; a load racing that notification is
        # (rightly) not cached, so wait for it before filling B's cache.
        assert await asyncio.wait_for(heard.get(), 10 * UNIT) == chat_id
        path = f"/api/v1/chats/{chat_id}/messages"
        assert (await api_b.call("POST", path, user=alice, body={"text": "a"}))[0] == 202
        assert membership_b.cached(chat_id) == frozenset({alice.user_id})
        assert (await api_b.call("POST", path, user=bob, body={"text": "b"}))[0] == 403
        status, _ = await api_a.call(
            "POST", f"/api/v1/chats/{chat_id}/members", user=alice,
            body={"member_ids": [bob.user_id]},
        )  # fmt: skip
        assert status == 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * UNIT
        while membership_b.cached(chat_id) == frozenset({alice.user_id}):
            assert loop.time() < deadline, "gateway B never heard of the change"
            await asyncio.sleep(0.02)
        assert (await api_b.call("POST", path, user=bob, body={"text": "b"}))[0] == 202
