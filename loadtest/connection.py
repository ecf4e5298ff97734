"""One account's WebSocket connection to the gateway (protocol v1), supervised.

The reader decodes every server frame with one msgspec struct that keeps only the fields
the generator needs (unknown fields, such as a message's text, are skipped without
building Python objects), and hands acks, errors and the sender's own ``message`` frames
to the process's :class:`~loadtest.tracker.Tracker`.

A dropped connection (gateway restart, 1008/1009/1012/1013 close, network) is reopened
with capped exponential backoff, then every send of this connection still waiting for an
ack is sent again *with the same client_id*: the protocol's idempotency key makes the
resend return the original ack and store nothing new, which verify checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import msgspec

from loadtest.provision import Account
from loadtest.tracker import CID, FRAME, RESENDS, Tracker, now_ns

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
#: Server frames can carry history pages of 200 messages.
MAX_FRAME = 4 * 1024 * 1024


class Incoming(msgspec.Struct):
    """The union of the server frame fields the generator reads."""

    type: str
    client_id: str | None = None
    id: str = ""
    seq: int = 0
    ts: int = 0
    priority: str = ""
    sender_id: int = 0
    code: str = ""


_decode = msgspec.json.Decoder(Incoming).decode


def ws_url(base_url: str, token: str) -> str:
    scheme, rest = base_url.rstrip("/").split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?token={token}"


class Connection:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, account: Account, tracker: Tracker
    ) -> None:
        self._session = session
        self._url = ws_url(base_url, account.token)
        self.account = account
        self.user_id = account.user_id
        self._tracker = tracker
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reconnects = 0
        self.closes: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def open(self) -> None:
        self.ws = await self._session.ws_connect(
            self._url, autoping=True, heartbeat=30.0, max_msg_size=MAX_FRAME, compress=0
        )

    async def send(self, frame: str) -> None:
        ws = self.ws
        if ws is None:
            raise ConnectionResetError("not connected")
        await ws.send_str(frame)

    async def run(self, stop: asyncio.Event) -> None:
        """Read frames until ``stop``; reconnect (and resend what is unacked) on a drop."""
        backoff = BACKOFF_MIN_S
        while not stop.is_set():
            if not self.connected:
                try:
                    await self.open()
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.debug("connect failed user=%s: %s", self.user_id, e)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
                    continue
                if self.reconnects:
                    await self._resend()
                backoff = BACKOFF_MIN_S
            await self._read()
            if not stop.is_set():
                self.reconnects += 1

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        tracker = self._tracker
        me = self.user_id
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            try:
                f = _decode(msg.data)
            except msgspec.DecodeError:
                log.warning("undecodable frame from gateway: %.80r", msg.data)
                continue
            t = f.type
            if t == "message":
                if f.sender_id == me:
                    tracker.on_own_message(f.id, now_ns())
            elif t == "ack":
                tracker.on_ack(f.client_id, f.id, f.seq, f.ts, f.priority, now_ns())
            elif t == "error":
                tracker.on_error(f.client_id, f.code, now_ns())
        code = str(ws.close_code)
        self.closes[code] = self.closes.get(code, 0) + 1
        if not ws.closed:
            await ws.close()

    async def _resend(self) -> None:
        for row in self._tracker.pending_on(self):
            row[RESENDS] += 1
            try:
                await self.send(row[FRAME])
            except (ConnectionResetError, aiohttp.ClientError):
                log.debug("resend of %s failed; retried on the next reconnect", row[CID])
                return

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def frame_parts(chat_id: int, client_id: str, text: str) -> str:
    """A ``send`` frame. The text is ASCII without quotes or backslashes (the generator
    builds it), so plain formatting is valid JSON and ~5x cheaper than an encoder."""
    return f'{{"type":"send","chat_id":{chat_id},"client_id":"{client_id}","text":"{text}"}}'


def http_body(client_id: str, text: str) -> dict[str, Any]:
    return {"text": text, "client_id": client_id}
