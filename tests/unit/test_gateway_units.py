"""Pure gateway logic: token buckets, tokens, Origin policy, the HTTP message shape."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp._websocket.writer import WebSocketWriter

from chat.errors import Unauthorized
from chat.serialization import MessageFrame
from gateway import schemas
from gateway.auth import OriginPolicy, Principal, Tokens
from gateway.hub import text_frame_header
from gateway.limits import FloodGate, LiveBudget, Verdict

HUMAN = Principal(user_id=1, name="Ann", kind="human")


def test_live_budget_allows_the_burst_then_demotes_and_refills() -> None:
    """LIVE_BURST live sends, then bulk; after 1/rate seconds one more live."""
    budget = LiveBudget(rate_per_s=5, burst=3)
    assert [budget.classify(HUMAN, now=0.0) for _ in range(4)] == ["live"] * 3 + ["bulk"]
    assert budget.classify(HUMAN, now=0.2) == "live"
    assert budget.classify(HUMAN, now=0.2) == "bulk"


@pytest.mark.parametrize("kind", ["bot", "loadtest"])
def test_non_human_accounts_are_always_bulk(kind: str) -> None:
    """Bots and load-test accounts never consume or get the live class."""
    budget = LiveBudget(rate_per_s=5, burst=3)
    who = Principal(user_id=2, name="b", kind=kind)  # type: ignore[arg-type]
    assert budget.classify(who, now=0.0) == "bulk"
    assert len(budget) == 0


def test_flood_gate_refuses_then_cuts() -> None:
    """Within the rate: pass; one burst over: refuse; two bursts over: cut."""
    gate = FloodGate(rate_per_s=10, now=0.0)
    verdicts = [gate.check(0.0) for _ in range(31)]
    assert verdicts[:10] == [Verdict.PASS] * 10
    assert set(verdicts[10:19]) == {Verdict.REFUSE}
    assert verdicts[-1] is Verdict.CUT


def test_tokens_round_trip_and_reject_tampering_and_expiry() -> None:
    """A token verifies to its principal; expired, forged or garbage ones are 401s."""
    tokens = Tokens("s" * 32, ttl_s=60)
    assert tokens.verify(tokens.issue(HUMAN)) == HUMAN
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(tokens.issue(HUMAN, now=1_000_000))
    with pytest.raises(Unauthorized):
        tokens.verify(Tokens("t" * 32, ttl_s=60).issue(HUMAN))
    with pytest.raises(Unauthorized):
        tokens.verify("not.a.jwt")


def test_origin_policy_same_host_by_default_and_allowlist_when_set() -> None:
    """No Origin passes; same host passes by default; an allowlist replaces that rule."""
    default = OriginPolicy("")
    assert default.allows(None, "chat.example")
    assert default.allows("https://chat.example", "chat.example")
    assert not default.allows("https://evil.example", "chat.example")
    listed = OriginPolicy("https://app.example, https://admin.example/")
    assert listed.allows("https://admin.example", "chat.example")
    assert not listed.allows("https://chat.example", "chat.example")
    assert OriginPolicy("*").allows("https://anything.example", "x")


def test_http_message_object_is_the_message_frame_without_type() -> None:
    """Contract: GET …/messages returns the WS message frame's fields, minus type."""
    frame = MessageFrame(
        id="i", chat_id=1, seq=2, ts=3, sender_id=4, sender_name="n", text="t",
        attachments=[], priority="live",
    )  # fmt: skip
    as_frame = msgspec.json.decode(msgspec.json.encode(frame))
    as_http = msgspec.json.decode(msgspec.json.encode(schemas.message_object(frame)))
    assert as_http == {k: v for k, v in as_frame.items() if k != "type"}
    assert list(as_http) == [k for k in as_frame if k != "type"]


class _Capture:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_coalesced_frames_are_byte_identical_to_aiohttps(length: int) -> None:
    """The gateway joins buffered frames into one write with its own headers: each
    header + payload equals what aiohttp's writer produces for a server text frame, at
    every length-encoding boundary (7-bit, 16-bit, 64-bit)."""
    transport: Any = _Capture()
    writer = WebSocketWriter(None, transport)  # type: ignore[arg-type]
    payload = b"x" * length
    writer._write_websocket_frame(payload, 0x1, 0)
    assert text_frame_header(length) + payload == transport.written
