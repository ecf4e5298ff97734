"""Enrichment: what a queued message lacks before it is stored (sender name, attachments).

The gateway enqueues only ids and keys (the queue entry stays small and the gateway
does no extra lookups per send); the consumer resolves them here, per *batch*, through
two in-process caches, so a steady flow costs no database round trip at all:

* sender names from SQL (:meth:`chat.storage.sql.Directory.users_by_id`), one query per
  batch for the ids not cached, TTL ``NAME_TTL_S`` (a renamed user shows the old name on
  new messages for at most that long; stored messages keep the name they were sent with);
* attachment metadata (content type, size) from the attachment store (S3 HEAD), cached
  without expiry: an uploaded object never changes (keys are unique, never reused).

Both caches are bounded LRUs. Lookups that fail for infrastructure reasons (SQL or S3
down) propagate: the consumer keeps the batch pending and retries. A sender that does
not exist (deleted account) gets an empty name, and an attachment that was never
uploaded is stored with ``UNKNOWN_CONTENT_TYPE`` and size 0: the message was accepted
(acked to its sender), so it is persisted rather than dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from chat.errors import NotFound
from chat.storage.attachments import ObjectInfo
from chat.storage.mongo import StoredAttachment
from chat.storage.sql import User

log = logging.getLogger(__name__)

#: How long a sender name is trusted; renames are rare and cosmetic.
NAME_TTL_S = 60.0
#: Entries per cache: ~100 bytes each, so a few MB at most.
CACHE_SIZE = 50_000
#: Stored for an attachment key that has no object behind it.
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
#: Concurrent attachment HEADs per batch (boto3 runs each in a thread).
HEAD_CONCURRENCY = 8

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded LRU whose entries expire ``ttl_s`` after insertion (None: never)."""

    def __init__(self, maxsize: int, ttl_s: float | None) -> None:
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._maxsize = maxsize
        self._ttl = ttl_s
        self.hits = 0
        self.misses = 0

    def get(self, key: K, now: float) -> V | None:
        item = self._data.get(key)
        if item is None or (self._ttl is not None and item[1] < now):
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: K, value: V, now: float) -> None:
        expires = now + self._ttl if self._ttl is not None else float("inf")
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class UserSource(Protocol):
    """The part of :class:`chat.storage.sql.Directory` enrichment needs."""

    async def users_by_id(self, ids: Iterable[int]) -> dict[int, User]: ...


class ObjectSource(Protocol):
    """The part of :class:`chat.storage.attachments.AttachmentStore` enrichment needs."""

    async def info(self, key: str) -> ObjectInfo: ...


class Enricher:
    """Resolves sender names and attachment metadata for a batch, through caches."""

    def __init__(
        self,
        users: UserSource,
        objects: ObjectSource,
        *,
        name_ttl_s: float = NAME_TTL_S,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._users = users
        self._objects = objects
        self._names: TtlCache[int, str] = TtlCache(cache_size, name_ttl_s)
        self._attachments: TtlCache[str, StoredAttachment] = TtlCache(cache_size, None)

    async def sender_names(self, sender_ids: Iterable[int]) -> Mapping[int, str]:
        """Name of every sender; unknown ids map to ``""``. SQL errors propagate."""
        now = time.monotonic()
        names: dict[int, str] = {}
        missing: list[int] = []
        for uid in set(sender_ids):
            name = self._names.get(uid, now)
            if name is None:
                missing.append(uid)
            else:
                names[uid] = name
        if missing:
            found = await self._users.users_by_id(missing)
            for uid in missing:
                user = found.get(uid)
                name = user.name if user is not None else ""
                if user is None:
                    log.warning("sender not found", extra={"sender_id": uid})
                self._names.put(uid, name, now)
                names[uid] = name
        return names

    async def attachments(self, keys: Iterable[str]) -> Mapping[str, StoredAttachment]:
        """Metadata of every key; a key with no object gets UNKNOWN_CONTENT_TYPE, size 0.

        Store errors other than "not found" propagate (the batch is retried).
        """
        now = time.monotonic()
        result: dict[str, StoredAttachment] = {}
        missing: list[str] = []
        for key in set(keys):
            cached = self._attachments.get(key, now)
            if cached is None:
                missing.append(key)
            else:
                result[key] = cached
        if missing:
            limit = asyncio.Semaphore(HEAD_CONCURRENCY)

            async def head(key: str) -> None:
                async with limit:
                    result[key] = await self._head(key, now)

            # gather, not a TaskGroup: the caller classifies the bare exception (an
            # ExceptionGroup would hide whether it is an infrastructure error).
            outcomes = await asyncio.gather(*(head(k) for k in missing), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return result

    async def _head(self, key: str, now: float) -> StoredAttachment:
        try:
            info = await self._objects.info(key)
        except NotFound:
            # Not cached: an upload that lands later is picked up by a redelivery.
            log.warning("attachment not found", extra={"key": key})
            return StoredAttachment(key=key, content_type=UNKNOWN_CONTENT_TYPE, size=0)
        value = StoredAttachment(key=key, content_type=info.content_type, size=info.size)
        self._attachments.put(key, value, now)
        return value
