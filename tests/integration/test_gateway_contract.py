"""Protocol v1 and HTTP API v1 (DESIGN.md contracts) against real processes: a gateway,
a worker and a priority service (``python -m …``) on the real Redis, MongoDB-wire server
and SQL, driven by real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from chat.config import Settings
from tests.conftest import UNIT
from tests.integration.gateway_stack import (
    JWT_SECRET,
    Api,
    Stack,
    User,
    Ws,
    running_stack,
    send_frame,
    wait_fanout,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    redis_url: str, mongo_url: str, sql_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_stack(redis_url, mongo_url, sql_url, tmp_path_factory.mktemp("gw")) as s:
        yield s


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api(http: aiohttp.ClientSession, stack: Stack) -> Api:
    return Api(http, stack.base_url)


@pytest.fixture
async def fanout_ready(http: aiohttp.ClientSession, stack: Stack) -> None:
    """Delivery tests start once the publishers have found this gateway."""
    if not stack.fanout_ok:
        await wait_fanout(http, stack)
        stack.fanout_ok = True


async def pair(api: Api) -> tuple[User, User, int]:
    alice, bob = await api.signup("Alice"), await api.signup("Bob")
    return alice, bob, await api.create_chat(alice, [bob], "pair")


# --------------------------------------------------------------------------- handshake


async def test_hello_lists_each_chat_with_its_last_seq(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """hello comes first and carries user_id and every chat with last_seq (0 when new)."""
    alice, bob, chat_id = await pair(api)
    status, _ = await api.call(
        "POST", f"/api/v1/chats/{chat_id}/messages", user=alice, body={"text": "one"}
    )
    assert status == 202
    ws = await Ws.connect(http, stack.ws_url, bob)
    assert ws.hello == {"type": "hello", "user_id": bob.user_id,
                        "chats": [{"chat_id": chat_id, "last_seq": 1}]}  # fmt: skip
    assert next(iter(ws.hello)) == "type"
    await ws.close()


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "expired", "wrong-secret", "unknown-kind"],
)
async def test_bad_or_expired_token_is_refused_at_handshake_with_401(
    http: aiohttp.ClientSession, stack: Stack, token: str
) -> None:
    """A missing, malformed, expired or forged token never upgrades: HTTP 401."""
    now = int(time.time())
    forged = {
        "expired": jwt.encode({"sub": "1", "iat": now - 100, "exp": now - 50}, JWT_SECRET),
        "wrong-secret": jwt.encode({"sub": "1", "iat": now, "exp": now + 60}, "other" * 8),
        "unknown-kind": jwt.encode(
            {"sub": "1", "iat": now, "exp": now + 60, "kind": "admin"}, JWT_SECRET
        ),
    }
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await http.ws_connect(f"{stack.ws_url}?token={forged.get(token, token)}")
    assert e.value.status == 401


async def test_bearer_header_authenticates_the_handshake(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """Authorization: Bearer works as well as ?token=."""
    alice = await api.signup("Alice")
    ws = await http.ws_connect(stack.ws_url, headers=alice.auth)
    assert json.loads(await ws.receive_str(timeout=10 * UNIT))["type"] == "hello"
    await ws.close()


async def test_foreign_origin_is_refused_and_same_origin_allowed(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """Browsers on another origin get 403; a page served by the gateway itself connects."""
    alice = await api.signup("Alice")
    url = f"{stack.ws_url}?token={alice.token}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await http.ws_connect(url, origin="https://evil.example")
    assert e.value.status == 403
    ws = await http.ws_connect(url, origin=stack.base_url)
    assert json.loads(await ws.receive_str(timeout=10 * UNIT))["type"] == "hello"
    await ws.close()


# --------------------------------------------------------------------------- send path


@pytest.mark.usefixtures("fanout_ready")
async def test_send_is_acked_then_delivered_to_every_member_including_sender(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """ack carries id/seq/ts/priority; the message frame reaches both members, complete."""
    alice, bob, chat_id = await pair(api)
    wa, wb = await Ws.connect(http, stack.ws_url, alice), await Ws.connect(http, stack.ws_url, bob)
    await wa.send(send_frame(chat_id, "hello bob", "cid-1"))
    ack = await wa.expect(lambda f: f["type"] == "ack")
    assert list(ack) == ["type", "client_id", "id", "chat_id", "seq", "ts", "priority"]
    assert (ack["client_id"], ack["chat_id"], ack["seq"], ack["priority"]) == (
        "cid-1", chat_id, 1, "live",
    )  # fmt: skip
    assert abs(ack["ts"] - time.time() * 1000) < 60_000
    expected = {
        "type": "message", "id": ack["id"], "chat_id": chat_id, "seq": 1, "ts": ack["ts"],
        "sender_id": alice.user_id, "sender_name": "Alice", "text": "hello bob",
        "attachments": [], "priority": "live",
    }  # fmt: skip
    assert (await wb.messages(chat_id, 1))[0] == expected
    assert (await wa.messages(chat_id, 1))[0] == expected
    await wa.close()
    await wb.close()


@pytest.mark.usefixtures("fanout_ready")
@pytest.mark.parametrize("kind", ["bot", "loadtest"])
async def test_bot_and_loadtest_accounts_always_send_bulk(
    api: Api, http: aiohttp.ClientSession, stack: Stack, kind: str
) -> None:
    """Non-human senders are bulk; the worker still persists and delivers them."""
    bot = await api.signup("Bot", kind=kind)
    chat_id = await api.create_chat(bot, [])
    ws = await Ws.connect(http, stack.ws_url, bot)
    await ws.send(send_frame(chat_id, "beep"))
    assert (await ws.expect(lambda f: f["type"] == "ack"))["priority"] == "bulk"
    assert (await ws.messages(chat_id, 1))[0]["priority"] == "bulk"
    await ws.close()


async def test_human_over_the_live_budget_is_demoted_to_bulk(
    api: Api, http: aiohttp.ClientSession, stack: Stack, settings: Settings
) -> None:
    """A human's burst beyond LIVE_BURST is classified bulk; the first ones are live."""
    alice = await api.signup("Alice")
    chat_id = await api.create_chat(alice, [])
    ws = await Ws.connect(http, stack.ws_url, alice)
    n = settings.live_burst + 10
    for i in range(n):
        await ws.send(send_frame(chat_id, f"m{i}", f"c{i}"))
    acks = [await ws.expect(lambda f: f["type"] == "ack") for _ in range(n)]
    priorities = [a["priority"] for a in sorted(acks, key=lambda a: a["seq"])]
    assert priorities[: settings.live_burst] == ["live"] * settings.live_burst
    assert priorities.count("bulk") >= 5
    await ws.close()


@pytest.mark.usefixtures("fanout_ready")
async def test_resend_with_same_client_id_returns_original_ack_and_stores_once(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """Idempotent resend: same ack (id, seq, ts), one stored message, no new seq."""
    alice, _, chat_id = await pair(api)
    ws = await Ws.connect(http, stack.ws_url, alice)
    await ws.send(send_frame(chat_id, "once", "same-id"))
    first = await ws.expect(lambda f: f["type"] == "ack")
    await ws.send(send_frame(chat_id, "once", "same-id"))
    again = await ws.expect(lambda f: f["type"] == "ack")
    assert again == first
    await ws.close()
    # A fresh connection (as after a reconnect) gets the same answer too.
    ws2 = await Ws.connect(http, stack.ws_url, alice)
    await ws2.send(send_frame(chat_id, "once", "same-id"))
    assert await ws2.expect(lambda f: f["type"] == "ack") == first
    stored = await api.wait_persisted(alice, chat_id, 1)
    await asyncio.sleep(0.5 * UNIT)
    stored = await api.messages(alice, chat_id, after_seq=0)
    assert [(m["id"], m["seq"]) for m in stored] == [(first["id"], 1)]
    await ws2.close()


async def test_http_resend_with_same_client_id_returns_original_result(
    api: Api, stack: Stack
) -> None:
    """POST …/messages with a repeated client_id answers 202 with the first id and seq."""
    alice, _, chat_id = await pair(api)
    path = f"/api/v1/chats/{chat_id}/messages"
    body = {"text": "hi", "client_id": "http-1"}
    s1, first = await api.call("POST", path, user=alice, body=body)
    s2, again = await api.call("POST", path, user=alice, body=body)
    assert (s1, s2) == (202, 202)
    assert again == first
    assert list(first) == ["id", "chat_id", "seq", "ts", "priority"]


@pytest.mark.usefixtures("fanout_ready")
async def test_http_send_is_persisted_and_delivered_end_to_end(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """202 from HTTP, message frame on the member's socket, and the same object via GET."""
    alice, bob, chat_id = await pair(api)
    wb = await Ws.connect(http, stack.ws_url, bob)
    status, accepted = await api.call(
        "POST", f"/api/v1/chats/{chat_id}/messages", user=alice, body={"text": "via http"}
    )
    assert status == 202
    frame = (await wb.messages(chat_id, 1))[0]
    assert (frame["id"], frame["seq"], frame["ts"]) == (
        accepted["id"], accepted["seq"], accepted["ts"],
    )  # fmt: skip
    stored = await api.wait_persisted(bob, chat_id, 1)
    assert stored == [{k: v for k, v in frame.items() if k != "type"}]
    await wb.close()


# --------------------------------------------------------------------------- resume, history


@pytest.mark.usefixtures("fanout_ready")
async def test_resume_after_dropped_connection_replays_missed_messages_in_order(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """Messages sent while a member was away come back, in seq order, exactly once, via
    resume from its cursor; then the connection continues live."""
    alice, bob, chat_id = await pair(api)
    wb = await Ws.connect(http, stack.ws_url, bob)
    wa = await Ws.connect(http, stack.ws_url, alice)
    await wa.send(send_frame(chat_id, "before"))
    cursor = (await wb.messages(chat_id, 1))[0]["seq"]
    await wb.ws.close()  # Bob's connection drops
    for i in range(5):
        await wa.send(send_frame(chat_id, f"missed {i}"))
    await wa.messages(chat_id, 6)  # all persisted and fanned out
    wb = await Ws.connect(http, stack.ws_url, bob)
    assert wb.hello["chats"] == [{"chat_id": chat_id, "last_seq": cursor + 5}]
    await wb.send({"type": "resume", "cursors": {str(chat_id): cursor}})
    replay = await wb.messages(chat_id, 5)
    assert [m["seq"] for m in replay] == list(range(cursor + 1, cursor + 6))
    assert [m["text"] for m in replay] == [f"missed {i}" for i in range(5)]
    await wa.send(send_frame(chat_id, "live again"))
    assert (await wb.messages(chat_id, 1))[0]["text"] == "live again"
    with pytest.raises(TimeoutError):  # nothing twice
        await wb.expect(lambda f: f["type"] == "message", wait_s=1 * UNIT)
    await wa.close()
    await wb.close()


async def test_resume_of_a_chat_you_are_not_in_is_forbidden(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """resume and history of someone else's chat answer forbidden; unknown chat not_found."""
    _, _, chat_id = await pair(api)
    eve = await api.signup("Eve")
    ws = await Ws.connect(http, stack.ws_url, eve)
    await ws.send({"type": "resume", "cursors": {str(chat_id): 0}})
    assert (await ws.expect(lambda f: f["type"] == "error"))["code"] == "forbidden"
    await ws.send({"type": "history", "chat_id": chat_id})
    assert (await ws.expect(lambda f: f["type"] == "error"))["code"] == "forbidden"
    await ws.send({"type": "history", "chat_id": 10**12})
    assert (await ws.expect(lambda f: f["type"] == "error"))["code"] == "not_found"
    await ws.close()


async def test_history_pages_backwards_in_seq_order(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """history without before_seq is the latest page; before_seq pages back; both ascend."""
    alice, _, chat_id = await pair(api)
    for i in range(7):
        status, _ = await api.call(
            "POST", f"/api/v1/chats/{chat_id}/messages", user=alice, body={"text": f"h{i}"}
        )
        assert status == 202
    await api.wait_persisted(alice, chat_id, 7)
    ws = await Ws.connect(http, stack.ws_url, alice)
    await ws.send({"type": "history", "chat_id": chat_id, "limit": 3})
    latest = await ws.expect(lambda f: f["type"] == "history")
    assert latest["chat_id"] == chat_id
    assert [m["seq"] for m in latest["messages"]] == [5, 6, 7]
    await ws.send({"type": "history", "chat_id": chat_id, "before_seq": 5, "limit": 3})
    older = await ws.expect(lambda f: f["type"] == "history")
    assert [m["seq"] for m in older["messages"]] == [2, 3, 4]
    await ws.send({"type": "history", "chat_id": chat_id, "limit": 201})
    assert (await ws.expect(lambda f: f["type"] == "error"))["code"] == "bad_request"
    await ws.close()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_request"),
        ('{"type":"dance"}', "bad_request"),
        ('{"type":"send","chat_id":1,"client_id":"x"}', "bad_request"),  # missing text
        ('{"type":"send","chat_id":"one","client_id":"x","text":"a"}', "bad_request"),
        ('{"type":"send","chat_id":1,"client_id":"x","text":""}', "bad_request"),
        ('{"type":"history"}', "bad_request"),
        ("[1,2,3]", "bad_request"),
    ],
)
async def test_malformed_frames_get_an_error_frame_and_the_connection_stays_open(
    api: Api, http: aiohttp.ClientSession, stack: Stack, frame: str, code: str
) -> None:
    """Bad JSON, unknown type, missing or mistyped fields: error frame, then business as
    usual (ping answers pong)."""
    alice = await api.signup("Alice")
    ws = await Ws.connect(http, stack.ws_url, alice)
    await ws.ws.send_str(frame)
    error = await ws.recv()
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    await ws.send({"type": "ping"})
    assert await ws.recv() == {"type": "pong"}
    await ws.close()


async def test_send_errors_carry_the_client_id(
    api: Api, http: aiohttp.ClientSession, stack: Stack, settings: Settings
) -> None:
    """too_large, forbidden, not_found and binary frames: error frames naming client_id."""
    alice, _, chat_id = await pair(api)
    _, _, foreign = await pair(api)
    ws = await Ws.connect(http, stack.ws_url, alice)
    big = "é" * (settings.max_text_bytes // 2 + 1)  # 2 bytes each in UTF-8
    cases = [
        (send_frame(chat_id, big, "big"), "too_large"),
        (send_frame(foreign, "hi", "nosy"), "forbidden"),
        (send_frame(10**12, "hi", "nowhere"), "not_found"),
    ]
    for frame, code in cases:
        await ws.send(frame)
        error = await ws.expect(lambda f: f["type"] == "error")
        assert (error["code"], error["client_id"]) == (code, frame["client_id"])
    await ws.ws.send_bytes(b"\x00\x01")
    assert (await ws.expect(lambda f: f["type"] == "error"))["code"] == "bad_request"
    await ws.close()


async def test_frame_over_max_frame_bytes_closes_with_1009(
    api: Api, http: aiohttp.ClientSession, stack: Stack, settings: Settings
) -> None:
    """A frame over MAX_FRAME_BYTES closes the connection with 1009."""
    alice = await api.signup("Alice")
    ws = await Ws.connect(http, stack.ws_url, alice)
    await ws.ws.send_str(json.dumps(send_frame(1, "x" * (settings.max_frame_bytes + 10))))
    msg = await ws.ws.receive(timeout=10 * UNIT)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1009


async def test_flood_is_rate_limited_then_closed_with_1008(
    api: Api, http: aiohttp.ClientSession, stack: Stack, settings: Settings
) -> None:
    """Past WS_FLOOD_PER_S frames are refused with rate_limited, then the socket closes 1008."""
    alice = await api.signup("Alice")
    ws = await Ws.connect(http, stack.ws_url, alice)
    for _ in range(int(settings.ws_flood_per_s * 3)):
        await ws.ws.send_str('{"type":"ping"}')
    codes: list[str] = []
    while True:
        msg = await ws.ws.receive(timeout=10 * UNIT)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        frame = json.loads(msg.data)
        codes.append(frame.get("code") or frame["type"])
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1008
    assert "pong" in codes
    assert "rate_limited" in codes


# --------------------------------------------------------------------------- membership


@pytest.mark.usefixtures("fanout_ready")
async def test_member_added_while_connected_receives_the_chat_without_reconnecting(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """POST …/members invalidates the member cache: the new member's open socket gets the
    chat's messages, and they may send to it at once."""
    alice, bob = await api.signup("Alice"), await api.signup("Bob")
    chat_id = await api.create_chat(alice, [])
    wb = await Ws.connect(http, stack.ws_url, bob)
    await wb.send(send_frame(chat_id, "let me in", "early"))
    assert (await wb.expect(lambda f: f["type"] == "error"))["code"] == "forbidden"
    status, body = await api.call(
        "POST", f"/api/v1/chats/{chat_id}/members", user=alice,
        body={"member_ids": [bob.user_id]},
    )  # fmt: skip
    assert (status, body) == (200, {"chat_id": chat_id, "member_ids": sorted(
        [alice.user_id, bob.user_id])})  # fmt: skip
    status, _ = await api.call(
        "POST", f"/api/v1/chats/{chat_id}/messages", user=alice, body={"text": "welcome"}
    )
    assert status == 202
    assert (await wb.messages(chat_id, 1))[0]["text"] == "welcome"
    await wb.send(send_frame(chat_id, "thanks", "late"))
    assert (await wb.expect(lambda f: f["type"] == "ack"))["client_id"] == "late"
    await wb.close()


# --------------------------------------------------------------------------- HTTP API


async def test_signup_login_and_me(api: Api) -> None:
    """signup 201 {user_id, token}; duplicate e-mail 409; login 200; wrong password 401."""
    alice = await api.signup("Alice")
    status, body = await api.call(
        "POST", "/api/v1/auth/signup",
        body={"email": alice.email.upper(), "password": "another one", "name": "A2"},
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await api.call(
        "POST", "/api/v1/auth/login", body={"email": alice.email, "password": "correct horse"}
    )
    assert status == 200
    assert set(body) == {"user_id", "token"}
    assert body["user_id"] == alice.user_id
    status, body = await api.call(
        "POST", "/api/v1/auth/login", body={"email": alice.email, "password": "wrong horse"}
    )
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body = await api.call("GET", "/api/v1/me", user=alice)
    assert body == {"user_id": alice.user_id, "name": "Alice", "kind": "human"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/auth/signup", {"email": "no-at-sign", "password": "long enough", "name": "x"}),
        ("/api/v1/auth/signup", {"email": "a@b.c", "password": "short", "name": "x"}),
        ("/api/v1/auth/signup", {"email": "a@b.c", "password": "long enough", "name": "x",
                                 "kind": "admin"}),
        ("/api/v1/auth/login", {"email": "a@b.c"}),
        ("/api/v1/auth/login", "not an object"),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_400_with_the_error_envelope(
    api: Api, path: str, body: object
) -> None:
    """Validation failures answer 400 {"error":{"code":"bad_request","message":…}}."""
    status, answer = await api.call("POST", path, body=body)
    assert status == 400
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"]["message"]


async def test_chats_list_and_message_listing(api: Api) -> None:
    """GET /chats lists members and last_seq; GET …/messages pages by after/before_seq."""
    alice, bob, chat_id = await pair(api)
    for i in range(4):
        await api.call(
            "POST", f"/api/v1/chats/{chat_id}/messages", user=bob, body={"text": f"t{i}"}
        )
    status, body = await api.call("GET", "/api/v1/chats", user=alice)
    assert status == 200
    assert body == {"chats": [{"chat_id": chat_id, "title": "pair",
                               "member_ids": sorted([alice.user_id, bob.user_id]),
                               "last_seq": 4}]}  # fmt: skip
    await api.wait_persisted(alice, chat_id, 4)
    assert [m["seq"] for m in await api.messages(alice, chat_id, after_seq=1, limit=2)] == [2, 3]
    assert [m["seq"] for m in await api.messages(alice, chat_id, before_seq=4)] == [1, 2, 3]
    assert [m["text"] for m in await api.messages(alice, chat_id, limit=2)] == ["t2", "t3"]
    status, body = await api.call(
        "GET", f"/api/v1/chats/{chat_id}/messages", user=alice, params={"limit": 500}
    )
    assert status == 400


async def test_only_members_read_or_send_over_http(api: Api) -> None:
    """403 for a non-member, 404 for no such chat, 401 without a token."""
    _, _, chat_id = await pair(api)
    eve = await api.signup("Eve")
    path = f"/api/v1/chats/{chat_id}/messages"
    assert (await api.call("GET", path, user=eve))[0] == 403
    assert (await api.call("POST", path, user=eve, body={"text": "x"}))[0] == 403
    assert (await api.call("POST", f"/api/v1/chats/{chat_id}/members", user=eve,
                           body={"member_ids": [eve.user_id]}))[0] == 403  # fmt: skip
    assert (await api.call("GET", "/api/v1/chats/999999999/messages", user=eve))[0] == 404
    status, body = await api.call("GET", path)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert (await api.call("GET", "/api/v1/chats"))[0] == 401
    assert (await api.call("POST", "/api/v1/chats", body={"member_ids": []}))[0] == 401


async def test_http_text_over_the_limit_is_413(api: Api, settings: Settings) -> None:
    """Text over MAX_TEXT_BYTES is too_large (413); an unknown member id is 409."""
    alice, _, chat_id = await pair(api)
    status, body = await api.call(
        "POST", f"/api/v1/chats/{chat_id}/messages", user=alice,
        body={"text": "x" * (settings.max_text_bytes + 1)},
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (413, "too_large")
    status, body = await api.call(
        "POST", "/api/v1/chats", user=alice, body={"member_ids": [10**12]}
    )
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_bulk_signup_provisions_loadtest_accounts_with_working_tokens(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """bulk-signup creates N loadtest accounts in order; each token opens a socket."""
    accounts = [{"email": f"lt{i}-{time.time_ns()}@example.test", "name": f"lt{i}"}
                for i in range(5)]  # fmt: skip
    status, body = await api.call(
        "POST", "/api/v1/auth/bulk-signup",
        body={"password": "load test pw", "accounts": accounts},
    )  # fmt: skip
    assert status == 201, body
    users = body["users"]
    assert [u["email"] for u in users] == [a["email"] for a in accounts]
    ws = await http.ws_connect(f"{stack.ws_url}?token={users[0]['token']}")
    assert json.loads(await ws.receive_str(timeout=10 * UNIT))["user_id"] == users[0]["user_id"]
    await ws.close()
    status, _ = await api.call(
        "POST",
        "/api/v1/auth/login",
        body={"email": accounts[4]["email"], "password": "load test pw"},
    )
    assert status == 200
    status, _ = await api.call(
        "POST", "/api/v1/auth/bulk-signup",
        body={"password": "load test pw", "accounts": accounts[:1]},
    )  # fmt: skip
    assert status == 409


@pytest.mark.usefixtures("fanout_ready")
async def test_attachment_upload_send_and_download(
    api: Api, http: aiohttp.ClientSession, stack: Stack
) -> None:
    """Upload slot -> signed PUT -> send with the key -> message carries url, type and
    size -> GET redirects to the bytes. Someone else's key is refused."""
    alice, bob, chat_id = await pair(api)
    data = b"\x89PNG fake image bytes"
    status, slot = await api.call(
        "POST", "/api/v1/attachments", user=alice,
        body={"content_type": "image/png", "size": len(data)},
    )  # fmt: skip
    assert status == 201
    async with http.put(stack.base_url + slot["upload_url"], data=data) as resp:
        assert resp.status == 204
    async with http.put(stack.base_url + slot["upload_url"] + "0", data=data) as resp:
        assert resp.status == 403
    wb = await Ws.connect(http, stack.ws_url, bob)
    await wb.send({**send_frame(chat_id, "", "theirs"), "attachments": [slot["key"]]})
    assert (await wb.expect(lambda f: f["type"] == "error"))["code"] == "forbidden"
    wa = await Ws.connect(http, stack.ws_url, alice)
    await wa.send({**send_frame(chat_id, "look"), "attachments": [slot["key"]]})
    message = (await wb.messages(chat_id, 1))[0]
    assert message["attachments"] == [{
        "key": slot["key"], "url": f"/api/v1/attachments/{slot['key']}",
        "content_type": "image/png", "size": len(data),
    }]  # fmt: skip
    async with http.get(
        stack.base_url + message["attachments"][0]["url"], headers=bob.auth
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["Content-Type"] == "image/png"
    await wa.close()
    await wb.close()


# --------------------------------------------------------------------------- operations


async def test_health_readiness_and_metrics(api: Api) -> None:
    """/healthz 200, /readyz 200 with every dependency ok, /metrics in Prometheus text."""
    assert await api.call("GET", "/healthz") == (200, {"status": "ok"})
    status, body = await api.call("GET", "/readyz")
    checks = {"redis": "ok", "mongo": "ok", "sql": "ok"}
    assert (status, body) == (200, {"status": "ok", "checks": checks})
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    assert "chat_ws_connections" in text
    assert "chat_enqueued_total" in text


async def test_openapi_document_matches_the_routes_and_docs_are_served_locally(
    api: Api, stack: Stack, settings: Settings
) -> None:
    """The served OpenAPI 3.1 document lists exactly the app's routes; /api/docs and the
    Swagger UI files come from the gateway itself; / serves the web client."""
    from gateway.app import create_app

    status, doc = await api.call("GET", "/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = create_app(settings)
    routed = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if route.method == "HEAD" or path is None or "prefix" in info:
            continue
        routed.add((route.method, path.replace(r"{chat_id}", "{chat_id}")))
    assert routed == documented
    contract = {
        ("POST", "/api/v1/auth/signup"), ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/chats"), ("GET", "/api/v1/chats"),
        ("GET", "/api/v1/chats/{chat_id}/messages"), ("POST", "/api/v1/chats/{chat_id}/messages"),
        ("POST", "/api/v1/attachments"), ("GET", "/healthz"), ("GET", "/readyz"),
        ("GET", "/metrics"), ("GET", "/"), ("GET", "/ws"), ("GET", "/api/openapi.json"),
    }  # fmt: skip
    assert contract <= documented
    for path in ("/api/docs", "/", "/static/swagger-ui/swagger-ui-bundle.js", "/static/app.js"):
        status, _ = await api.call("GET", path)
        assert status == 200, path
    status, html = await api.call("GET", "/api/docs")
    assert "/static/swagger-ui/swagger-ui-bundle.js" in html
    assert "http" not in html.replace("http-equiv", "")  # no CDN


async def test_schemathesis_finds_no_contract_violation(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    """Schemathesis (bounded) against the live API: every response matches the document,
    no 5xx, no schema-valid request rejected."""
    alice = await api.signup("Fuzz")
    proc = await asyncio.create_subprocess_exec(
        str(Path(__import__("sys").executable).with_name("schemathesis")), "run",
        f"{stack.base_url}/api/openapi.json",
        "--header", f"Authorization: Bearer {alice.token}",
        "--max-examples", "12",
        "--phases", "examples,coverage,fuzzing",
        "--exclude-path", "/ws",
        "--exclude-path-regex", "attachments/.*/upload",
        "--seed", "1",
        "--request-timeout", str(10 * UNIT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 100 * UNIT)
    assert proc.returncode == 0, out.decode(errors="replace")[-6000:]
