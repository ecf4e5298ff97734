"""Who may send to, read and resume a chat: member lists from SQL, cached per gateway.

The cache maps ``chat_id -> frozenset(member ids)``; the send path reads it without an
``await`` when the entry is present (:meth:`Membership.cached`), which is what keeps a
send at one Redis round trip. Correctness on change:

* a gateway that changes members (``POST /api/v1/chats``, ``…/members``) drops its own
  entry at once and PUBLISHes the chat id on ``KeySpace.membership_channel``;
* every gateway listens on that channel (:meth:`Membership.run`), drops the entry and
  tells the connection hub, which attaches newly added members that are connected here
  (they start receiving the chat without reconnecting);
* a load racing an invalidation is not cached (the SQL read may predate the change);
* pub/sub is fire-and-forget: while the listener is disconnected the whole cache is
  cleared and every entry also expires after ``MEMBERSHIP_CACHE_TTL_S``, bounding how
  long a missed notification can matter.

Concurrent misses for one chat share one SQL query (single flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from chat.errors import Forbidden, NotFound, Unavailable
from chat.keys import KeySpace
from chat.lifecycle import wait_stopped
from chat.storage.sql import Directory

log = logging.getLogger(__name__)

#: Chats whose member lists are cached; least recently used beyond this are dropped.
MAX_CACHED_CHATS = 200_000
#: Pause before resubscribing after the pub/sub connection failed.
RESUBSCRIBE_BACKOFF_S = 1.0

OnChange = Callable[[int, frozenset[int]], Awaitable[None]]


class Membership:
    def __init__(
        self,
        directory: Directory,
        redis: Any,
        keyspace: KeySpace,
        *,
        ttl_s: float,
        max_entries: int = MAX_CACHED_CHATS,
    ) -> None:
        self._directory = directory
        self._redis = redis
        self._channel = keyspace.membership_channel
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[int, tuple[frozenset[int], float]] = OrderedDict()
        self._loading: dict[int, asyncio.Task[frozenset[int]]] = {}
        self._raced: set[int] = set()
        self._listeners: list[OnChange] = []
        self.listening = False

    # ------------------------------------------------------------------ reads

    def cached(self, chat_id: int) -> frozenset[int] | None:
        """The member ids if cached and fresh, without waiting (send fast path)."""
        entry = self._entries.get(chat_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    async def members(self, chat_id: int) -> frozenset[int]:
        """Member ids (empty: no such chat); :class:`Unavailable` if SQL is down."""
        hit = self.cached(chat_id)
        if hit is not None:
            self._entries.move_to_end(chat_id)
            return hit
        task = self._loading.get(chat_id)
        if task is None:
            self._raced.discard(chat_id)
            task = asyncio.ensure_future(self._load(chat_id))
            self._loading[chat_id] = task
            task.add_done_callback(lambda _t: self._loading.pop(chat_id, None))
        # shield: one cancelled caller must not cancel the query the others wait for.
        return await asyncio.shield(task)

    async def require_member(self, chat_id: int, user_id: int) -> frozenset[int]:
        members = await self.members(chat_id)
        check_member(members, chat_id, user_id)
        return members

    async def _load(self, chat_id: int) -> frozenset[int]:
        try:
            ids = frozenset(await self._directory.member_ids(chat_id))
        except (SQLAlchemyError, OSError) as e:
            raise Unavailable("directory unavailable, retry later") from e
        if chat_id not in self._raced:
            self.prime(chat_id, ids)
        self._raced.discard(chat_id)
        return ids

    def prime(self, chat_id: int, members: frozenset[int]) -> None:
        """Store a member list read elsewhere (e.g. the user's chats at connect)."""
        if chat_id in self._loading and chat_id in self._raced:
            return
        self._entries[chat_id] = (members, time.monotonic() + self._ttl)
        self._entries.move_to_end(chat_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    # ------------------------------------------------------------------ changes

    def invalidate(self, chat_id: int) -> None:
        self._entries.pop(chat_id, None)
        if chat_id in self._loading:
            self._raced.add(chat_id)

    def clear(self) -> None:
        self._entries.clear()
        self._raced.update(self._loading)

    def on_change(self, listener: OnChange) -> None:
        """``listener(chat_id, members)`` after a chat's members changed anywhere."""
        self._listeners.append(listener)

    async def changed(self, chat_id: int) -> None:
        """Members of ``chat_id`` changed in SQL: drop the entry here, notify every gateway."""
        self.invalidate(chat_id)
        await self._notify_local(chat_id)
        try:
            await self._redis.publish(self._channel, str(chat_id))
        except Exception:  # the TTL bounds staleness elsewhere
            log.warning("membership publish failed", extra={"chat_id": chat_id}, exc_info=True)

    async def _notify_local(self, chat_id: int) -> None:
        if not self._listeners:
            return
        try:
            members = await self.members(chat_id)
        except Unavailable:
            log.warning("membership reload failed", extra={"chat_id": chat_id})
            return
        for listener in self._listeners:
            await listener(chat_id, members)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen for invalidations until ``stop``; resubscribe after failures."""
        while not stop.is_set():
            try:
                await self._listen(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("membership listener lost its connection", exc_info=True)
            finally:
                self.listening = False
                self.clear()  # notifications may have been missed meanwhile
            await wait_stopped(stop, RESUBSCRIBE_BACKOFF_S)

    async def _listen(self, stop: asyncio.Event) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.listening = True
            log.info("membership listener subscribed", extra={"channel": self._channel})
            while not stop.is_set():
                message = await pubsub.get_message(timeout=0.5)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    chat_id = int(message["data"])
                except (TypeError, ValueError):
                    continue
                self.invalidate(chat_id)
                await self._notify_local(chat_id)
        finally:
            await pubsub.aclose()


def check_member(members: frozenset[int], chat_id: int, user_id: int) -> None:
    """NotFound for a chat with no members (it does not exist), Forbidden for outsiders."""
    if user_id in members:
        return
    if not members:
        raise NotFound(f"chat {chat_id} does not exist")
    raise Forbidden(f"not a member of chat {chat_id}")
