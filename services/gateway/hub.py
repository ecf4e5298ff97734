"""Local delivery: the gateway's open connections, indexed by chat, fed by the fan-out.

Fan-out never awaits one client (CONVENTIONS 6, websockets' ``broadcast()`` essay). The
publisher encodes a ``message`` frame once; the gateway receives those bytes on its ZeroMQ
SUB socket and :meth:`Hub.deliver` appends the same ``bytes`` object to the send buffer of
every local member's :class:`Connection` — no decode, no copy, no await. Each connection
has one writer task that drains its buffer into the socket, every frame buffered when it
wakes in one write.

The trade-off, chosen on purpose: a buffer is bounded (``WS_SEND_QUEUE`` frames). A client
that cannot keep up is disconnected with close code 1013 (try again later) and its buffer
dropped, instead of the gateway's memory growing with the slowest reader or the fan-out
stalling for everyone. Nothing is lost: every ``message`` is already in MongoDB, and the
client's ``resume`` with its cursors replays what it missed after it reconnects.

Replies the gateway generates itself (``ack``, ``error``, ``history``, ``resume``
replays) share the same buffer so a client sees them in the order they were produced.
Replays are paced (:meth:`Connection.put` waits for room) rather than disconnecting,
since the gateway controls their rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from chat import metrics
from chat.errors import WS_CLOSE_RESTART, WS_CLOSE_TRY_AGAIN
from chat.fanout import Subscriber
from gateway.auth import Principal

log = logging.getLogger(__name__)

#: A close handshake may take this long; then the transport is closed under it (a peer
#: that does not read would otherwise hold the close forever).
CLOSE_TIMEOUT_S = 5.0
#: After aborting a slow reader, its socket gets this long to take the bytes already
#: buffered (ending with the 1013 close frame) before it is reset.
ABORT_GRACE_S = 5.0

#: Close code of a session that ended normally (the client left).
WS_CLOSE_NORMAL = 1000

#: Bytes of frames joined into one transport write at most.
MAX_WRITE_BYTES = 256 * 1024

#: RFC 6455 section 5.2: FIN + opcode 1 (text), then the length; a server never masks.
_SHORT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_pack_len16 = struct.Struct("!BBH").pack
_pack_len64 = struct.Struct("!BBQ").pack


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, uncompressed, final text frame of ``length`` bytes."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return _pack_len16(0x81, 126, length)
    return _pack_len64(0x81, 127, length)


class _SeqOnly(msgspec.Struct):
    seq: int


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


def seq_of(payload: bytes) -> int:
    """The ``seq`` of an encoded ``message`` frame (only used while replaying)."""
    return _seq_decoder.decode(payload).seq


class Connection:
    """One WebSocket: its principal, its chats and its bounded send buffer."""

    __slots__ = (
        "_capacity",
        "_closer",
        "_closing",
        "_drain",
        "_queue",
        "_room",
        "_transport",
        "_wakeup",
        "_writer",
        "chats",
        "close_code",
        "close_reason",
        "conn_id",
        "principal",
        "replaying",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        conn_id: str,
        capacity: int,
        transport: asyncio.Transport,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._drain = drain
        self.principal = principal
        self.conn_id = conn_id
        self.chats: set[int] = set()
        #: chat_id -> live payloads held back while a resume replays that chat.
        self.replaying: dict[int, list[bytes]] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._capacity = capacity
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def buffered(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._writer = asyncio.ensure_future(self._write_loop())

    # ------------------------------------------------------------------ producers

    def push(self, frame: bytes) -> bool:
        """Buffer a frame without waiting. A full buffer disconnects the client (1013)."""
        if self._closing:
            return False
        queue = self._queue
        if len(queue) >= self._capacity:
            metrics.SLOW_CLIENT_CLOSES.inc()
            self.abort(WS_CLOSE_TRY_AGAIN, "send buffer full: reconnect and resume")
            return False
        queue.append(frame)
        if len(queue) == 1:
            self._wakeup.set()
        return True

    def deliver(self, chat_id: int, payload: bytes) -> bool:
        """A fan-out ``message`` for ``chat_id``: held back while that chat replays."""
        if self.replaying:
            held = self.replaying.get(chat_id)
            if held is not None:
                held.append(payload)
                return True
        return self.push(payload)

    async def put(self, frame: bytes) -> bool:
        """Buffer a frame, waiting while the buffer is over half full (paced replies)."""
        while len(self._queue) >= self._capacity // 2 and not self._closing:
            self._room.clear()
            await self._room.wait()
        return self.push(frame)

    # ------------------------------------------------------------------ replay

    def begin_replay(self, chat_id: int) -> None:
        self.replaying.setdefault(chat_id, [])

    def end_replay(self, chat_id: int, last_seq: int) -> None:
        """Release held live messages newer than what the replay sent."""
        held = self.replaying.pop(chat_id, None)
        for payload in held or ():
            if seq_of(payload) > last_seq:
                self.push(payload)

    # ------------------------------------------------------------------ closing

    def close(self, code: int, reason: str = "") -> None:
        """Close after the buffered frames are written (graceful)."""
        if self._closing:
            return
        self._closing = True
        self.close_code, self.close_reason = code, reason
        self._wakeup.set()
        self._room.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping the buffer (slow consumer, flood)."""
        self._queue.clear()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        was_closing = self._closing
        self._closing = True
        self._room.set()
        if not was_closing:
            self.close_code, self.close_reason = code, reason
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close_socket(timeout=1.0))
            asyncio.get_running_loop().call_later(ABORT_GRACE_S, self._transport.abort)

    async def finish(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline for two tasks
        """The session is over: let the writer flush and close (up to ``timeout``), then
        cancel whatever is left."""
        self.close(WS_CLOSE_NORMAL)
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _write_loop(self) -> None:
        try:
            await self._write_coalesced(self._transport, self._drain)
        except (ConnectionError, RuntimeError):
            # The peer went away mid-write (ConnectionResetError, or aiohttp's
            # "closing transport"): the reader side ends the session.
            self._closing = True
            return
        await self._close_socket()

    async def _write_coalesced(
        self, transport: asyncio.Transport, drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Every frame buffered when the writer wakes goes out in one ``transport.write``
        (one ``send`` syscall instead of one per frame: the acks of a batch arrive
        together). Flow control is the transport's: ``drain`` waits while it is paused,
        i.e. while the peer is not reading, and meanwhile the buffer fills up to the
        1013 limit exactly as with per-frame writes."""
        ws, queue, wakeup, room = self.ws, self._queue, self._wakeup, self._room
        half = self._capacity // 2
        headers, header_of, popleft = _SHORT_HEADERS, text_frame_header, queue.popleft
        while True:
            while queue:
                if ws.closed or transport.is_closing():
                    # aiohttp started the close handshake (its close frame may already
                    # be out): nothing may follow it.
                    raise ConnectionResetError("closing transport")
                parts: list[bytes] = []
                size = 0
                while queue and size < MAX_WRITE_BYTES:
                    frame = popleft()
                    n = len(frame)
                    parts.append(headers[n] if n < 126 else header_of(n))
                    parts.append(frame)
                    size += n
                transport.write(b"".join(parts))
                if len(queue) < half:
                    room.set()
                await drain()  # returns at once unless the transport is paused
            if self._closing:
                return
            wakeup.clear()
            await wakeup.wait()

    async def _close_socket(self, timeout: float = CLOSE_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """Send the close frame and wait for the peer's; on timeout aiohttp closes the
        transport (which still flushes what is buffered, close frame included)."""
        code = self.close_code or WS_CLOSE_RESTART
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            async with asyncio.timeout(timeout):
                # drain=False: a peer that stopped reading keeps the transport paused, and
                # waiting for it would only delay the close frame already buffered.
                await self.ws.close(
                    code=code, message=self.close_reason.encode()[:120], drain=False
                )


class Hub:
    """Every local connection, by chat and by user; the fan-out's delivery target."""

    def __init__(self, subscriber: Subscriber | None) -> None:
        self._subscriber = subscriber
        self._by_chat: dict[int, set[Connection]] = {}
        self._by_user: dict[int, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.delivered = 0
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._empty.clear()
        self._by_user.setdefault(conn.principal.user_id, set()).add(conn)
        metrics.WS_CONNECTIONS.set(len(self.connections))

    def remove(self, conn: Connection) -> None:
        for chat_id in list(conn.chats):
            self.detach(conn, chat_id)
        self.connections.discard(conn)
        mine = self._by_user.get(conn.principal.user_id)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_user[conn.principal.user_id]
        if not self.connections:
            self._empty.set()
        metrics.WS_CONNECTIONS.set(len(self.connections))

    def attach(self, conn: Connection, chat_id: int) -> None:
        """Start delivering ``chat_id`` to ``conn`` (subscribes the fan-out on first use)."""
        if chat_id in conn.chats:
            return
        conn.chats.add(chat_id)
        local = self._by_chat.get(chat_id)
        if local is None:
            local = self._by_chat[chat_id] = set()
            if self._subscriber is not None:
                self._subscriber.subscribe(chat_id)
        local.add(conn)

    def detach(self, conn: Connection, chat_id: int) -> None:
        conn.chats.discard(chat_id)
        local = self._by_chat.get(chat_id)
        if local is None:
            return
        local.discard(conn)
        if not local:
            del self._by_chat[chat_id]
            if self._subscriber is not None:
                self._subscriber.unsubscribe(chat_id)

    def deliver(self, chat_id: int, payload: bytes) -> None:
        """Fan-out callback: queue ``payload`` to every local member; never awaits."""
        local = self._by_chat.get(chat_id)
        if not local:
            return
        for conn in local:
            conn.deliver(chat_id, payload)
        self.delivered += len(local)
        metrics.DELIVERED.inc(len(local))

    async def members_changed(self, chat_id: int, members: frozenset[int]) -> None:
        """Attach connected users who joined ``chat_id``; detach those who left."""
        for user_id in members:
            for conn in self._by_user.get(user_id, ()):
                self.attach(conn, chat_id)
        for conn in list(self._by_chat.get(chat_id, ())):
            if conn.principal.user_id not in members:
                self.detach(conn, chat_id)

    async def wait_empty(self, timeout: float) -> bool:  # noqa: ASYNC109 - shutdown deadline
        """Until every session ended (True) or ``timeout`` passed (False)."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def chats(self) -> int:
        return len(self._by_chat)

    def broadcast(self, frame: bytes) -> None:
        for conn in self.connections:
            conn.push(frame)

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections):
            conn.close(code, reason)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), "chats": len(self._by_chat)}
