"""``GET /ws``: WebSocket protocol v1 (DESIGN.md contract), one :class:`Session` per socket.

Handshake: token (401), Origin (403), then ``hello`` with each chat's ``last_seq``.
The session is attached to its chats *before* ``last_seq`` is read, so every message is
either delivered live or counted in ``hello`` (and recoverable with ``resume``).

The reader loop never awaits the network or a database for a frame: ``send`` goes through
the synchronous fast path and gets its ``ack`` from a done-callback; ``resume`` and
``history`` run as tasks (one at a time per connection, in arrival order); ``ping`` is
answered inline. Every failure is an ``error`` frame or a close code, never an exception
escaping the session:

====================================  ==============================================
unknown type, bad JSON, wrong fields  ``error`` bad_request (connection stays open)
text over MAX_TEXT_BYTES              ``error`` too_large
not a member / no such chat           ``error`` forbidden / not_found
frames past WS_FLOOD_PER_S            ``error`` rate_limited, then close 1008
frame over MAX_FRAME_BYTES            close 1009 (aiohttp's reader)
queue backlog full, Redis/Mongo down  ``error`` unavailable (resend with same client_id)
send buffer full (slow reader)        close 1013
graceful shutdown                     ``reconnect``, then close 1012
====================================  ==============================================
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from chat import metrics
from chat.errors import (
    WS_CLOSE_POLICY,
    WS_CLOSE_TRY_AGAIN,
    BadRequest,
    ClientError,
    Forbidden,
    RateLimited,
    Unavailable,
)
from chat.serialization import (
    AckFrame,
    ChatCursor,
    ErrorFrame,
    HelloFrame,
    HistoryFrame,
    HistoryReply,
    PingFrame,
    PongFrame,
    ResumeFrame,
    SendFrame,
    decode_client_frame,
    encode_frame,
)
from chat.streams import Accepted
from gateway import appkeys
from gateway.auth import Principal, authenticate
from gateway.cursors import last_seqs
from gateway.hub import Connection
from gateway.limits import FloodGate, Verdict
from gateway.membership import check_member

log = logging.getLogger(__name__)

#: Messages per MongoDB query while replaying a resume.
REPLAY_PAGE = 200
#: Chats one ``resume`` may name.
MAX_RESUME_CHATS = 5000
#: How long a finished session waits for its writer to flush and close.
FINISH_TIMEOUT_S = 5.0
#: Dependency failures reported as ``unavailable`` instead of crashing a session.
DEPENDENCY_ERRORS = (PyMongoError, RedisError, SQLAlchemyError, OSError)

_PONG = encode_frame(PongFrame())
_conn_ids = itertools.count(1)
_PROCESS_TAG = f"{os.getpid():x}"


class _Loose(msgspec.Struct):
    client_id: str | None = None


_loose_decoder = msgspec.json.Decoder(_Loose)


def _client_id_of(data: str | bytes) -> str | None:
    """The ``client_id`` of a frame that failed validation, if one can be read."""
    try:
        return _loose_decoder.decode(data).client_id
    except msgspec.MsgspecError:
        return None


async def handle_ws(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.SETTINGS]
    if app[appkeys.LIFECYCLE].stopping:
        raise Unavailable("gateway is restarting, reconnect")
    who = authenticate(request, app[appkeys.TOKENS])
    if not app[appkeys.ORIGINS].allows(request.headers.get("Origin"), request.host):
        raise Forbidden("origin not allowed")
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes,
        compress=False,  # deflate costs more CPU per small frame than it saves bandwidth
        heartbeat=settings.ws_heartbeat_s,
    )
    if not ws.can_prepare(request).ok:
        raise BadRequest("WebSocket upgrade required")
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during the upgrade
        return ws
    await Session(app, ws, who, transport, request.writer.drain).run()
    return ws


class Session:
    """One client connection speaking protocol v1."""

    def __init__(
        self,
        app: web.Application,
        ws: web.WebSocketResponse,
        who: Principal,
        transport: asyncio.Transport,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        settings = app[appkeys.SETTINGS]
        self.app = app
        self.who = who
        conn_id = f"{_PROCESS_TAG}-{next(_conn_ids)}"
        self.conn = Connection(ws, who, conn_id, settings.ws_send_queue, transport, drain)
        self._gate = FloodGate(settings.ws_flood_per_s)
        self._hub = app[appkeys.HUB]
        self._sender = app[appkeys.SENDER]
        self._membership = app[appkeys.MEMBERSHIP]
        self._lifecycle = app[appkeys.LIFECYCLE]
        self._tasks: set[asyncio.Task[None]] = set()
        self._slow_sends = 0
        self._send_order = asyncio.Lock()
        self._read_order = asyncio.Lock()
        self.frames = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        conn, started = self.conn, time.monotonic()
        conn.start()
        self._hub.add(conn)
        log.info("ws open", extra={"conn_id": conn.conn_id, "user_id": self.who.user_id})
        try:
            if await self._hello():
                await self._read_loop()
        finally:
            self._hub.remove(conn)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await conn.finish(FINISH_TIMEOUT_S)
            log.info(
                "ws close",
                extra={
                    "conn_id": conn.conn_id,
                    "user_id": self.who.user_id,
                    "code": conn.ws.close_code,
                    "frames": self.frames,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )

    async def _hello(self) -> bool:
        conn, app = self.conn, self.app
        try:
            chats = await app[appkeys.DIRECTORY].chats_of(self.who.user_id)
            for chat in chats:
                self._membership.prime(chat.id, frozenset(chat.member_ids))
                # Held back until ``hello`` is out: it is the first frame.
                conn.begin_replay(chat.id)
                self._hub.attach(conn, chat.id)
            seqs = await last_seqs(app[appkeys.REDIS], app[appkeys.KEYSPACE], [c.id for c in chats])
        except DEPENDENCY_ERRORS:
            log.warning("ws hello failed", extra={"conn_id": conn.conn_id}, exc_info=True)
            self._error(Unavailable("directory or queue unavailable, reconnect later"))
            conn.close(WS_CLOSE_TRY_AGAIN, "dependency unavailable")
            return False
        cursors = [ChatCursor(chat_id=c.id, last_seq=seqs.get(c.id, 0)) for c in chats]
        conn.push(encode_frame(HelloFrame(user_id=self.who.user_id, chats=cursors)))
        for chat in chats:
            conn.end_replay(chat.id, 0)  # what arrived meanwhile, in arrival order
        return True

    async def _read_loop(self) -> None:
        ws, conn, gate = self.conn.ws, self.conn, self._gate
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if conn.closing:
                break
            self.frames += 1
            verdict = gate.check(loop.time())
            if verdict is not Verdict.PASS:
                if verdict is Verdict.CUT:
                    metrics.WS_ERRORS.labels(code="rate_limited").inc()
                    conn.close(WS_CLOSE_POLICY, "flood: too many frames")
                    break
                data = msg.data if msg.type is WSMsgType.TEXT else "{}"
                self._error(RateLimited("too many frames: slow down"), _client_id_of(data))
                continue
            if msg.type is WSMsgType.TEXT:
                self._handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._error(BadRequest("binary frames are not part of protocol v1"))
            else:  # ERROR: aiohttp already closed it (e.g. 1009 for an oversized frame)
                break

    # ------------------------------------------------------------------ frames

    def _handle(self, data: str) -> None:
        try:
            frame = decode_client_frame(data)
        except BadRequest as e:
            self._error(e, client_id=_client_id_of(data))
            return
        kind = type(frame)
        if kind is SendFrame:
            self._send(frame)  # type: ignore[arg-type]
        elif kind is PingFrame:
            self.conn.push(_PONG)
        elif kind is ResumeFrame:
            self._spawn(self._resume(frame))  # type: ignore[arg-type]
        elif kind is HistoryFrame:
            self._spawn(self._history(frame))  # type: ignore[arg-type]

    def _send(self, f: SendFrame) -> None:
        if self._lifecycle.stopping:
            self._error(
                Unavailable("gateway is restarting: resend after reconnecting"), f.client_id
            )
            return
        if self._slow_sends == 0:
            try:
                queued = self._sender.prepare(
                    self.who, f.chat_id, f.text, f.attachments, f.client_id
                )
            except ClientError as e:
                self._error(e, f.client_id)
                return
            if queued is not None:
                self._sender.submit(queued, functools.partial(self._acked, f.client_id))
                return
        # Cache miss or attachments: keep this connection's sends in arrival order by
        # routing everything through the ordered slow path until it is empty again.
        self._slow_sends += 1
        self._spawn(self._send_slow(f))

    async def _send_slow(self, f: SendFrame) -> None:
        try:
            async with self._send_order:
                try:
                    queued = await self._sender.prepare_slow(
                        self.who, f.chat_id, f.text, f.attachments, f.client_id
                    )
                    self._sender.submit(queued, functools.partial(self._acked, f.client_id))
                finally:
                    self._slow_sends -= 1
        except ClientError as e:
            self._error(e, f.client_id)

    def _acked(self, client_id: str | None, result: Accepted | Unavailable) -> None:
        if isinstance(result, Unavailable):
            self._error(result, client_id)
        else:
            self.conn.push(
                encode_frame(
                    AckFrame(
                        client_id=client_id,
                        id=result.id,
                        chat_id=result.chat_id,
                        seq=result.seq,
                        ts=result.ts,
                        priority=result.priority,
                    )
                )
            )

    async def _resume(self, f: ResumeFrame) -> None:
        if len(f.cursors) > MAX_RESUME_CHATS:
            raise BadRequest(f"resume names more than {MAX_RESUME_CHATS} chats")
        async with self._read_order:
            allowed: list[int] = []
            for chat_id in sorted(f.cursors):
                if chat_id in self.conn.chats or await self._admit(chat_id):
                    allowed.append(chat_id)
            seqs = await last_seqs(self.app[appkeys.REDIS], self.app[appkeys.KEYSPACE], allowed)
            for chat_id in allowed:
                after = f.cursors[chat_id]
                if seqs.get(chat_id, 0) > after:
                    await self._replay(chat_id, after)

    async def _admit(self, chat_id: int) -> bool:
        """A chat this connection is not attached to: attach it if the user is a member
        (added while connected), else report the error and skip it."""
        try:
            members = await self._membership.members(chat_id)
            check_member(members, chat_id, self.who.user_id)
        except ClientError as e:
            self._error(e)
            return False
        self._hub.attach(self.conn, chat_id)
        return True

    async def _replay(self, chat_id: int, after: int) -> None:
        conn, store = self.conn, self.app[appkeys.STORE]
        conn.begin_replay(chat_id)
        last = after
        try:
            while True:
                page = await store.after_seq(chat_id, last, REPLAY_PAGE)
                for message in page:
                    if not await conn.put(encode_frame(message)):
                        return
                    last = message.seq
                if len(page) < REPLAY_PAGE:
                    return
        finally:
            conn.end_replay(chat_id, last)

    async def _history(self, f: HistoryFrame) -> None:
        async with self._read_order:
            await self._membership.require_member(f.chat_id, self.who.user_id)
            messages = await self.app[appkeys.STORE].before_seq(f.chat_id, f.before_seq, f.limit)
            await self.conn.put(encode_frame(HistoryReply(chat_id=f.chat_id, messages=messages)))

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ClientError as e:
            self._error(e)
        except DEPENDENCY_ERRORS as e:
            log.warning(
                "ws request failed",
                extra={"conn_id": self.conn.conn_id, "error": type(e).__name__},
            )
            self._error(Unavailable("storage unavailable, retry"))

    def _error(self, e: ClientError, client_id: str | None = None) -> None:
        code = e.code
        metrics.WS_ERRORS.labels(code=code).inc()
        frame = ErrorFrame(code=code, message=e.message, client_id=client_id or e.client_id)
        self.conn.push(encode_frame(frame))
