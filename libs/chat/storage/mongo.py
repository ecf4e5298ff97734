"""MongoDB (Amazon DocumentDB in AWS) message store.

The ``messages`` document::

    _id           message id (UUIDv7 string)       idempotency: a redelivered entry collides
    chat_id       int                               shard key (hashed) on DocumentDB elastic
    seq           int                               unique with chat_id
    ts            BSON date (ms)                    assigned at enqueue by Redis TIME
    sender_id     int
    sender_name   str                               denormalised at persist time
    text          str
    attachments   [{key, content_type, size}]
    priority      "live" | "bulk"
    persisted_at  BSON date                         this process's clock at insert

If you add a field: set it in :func:`to_document`, read it with a default in
:func:`from_document` (old documents lack it), and add an index in :data:`INDEXES` if it
is queried.

Exactly-once storage = at-least-once delivery + these two unique keys: a second insert
of the same message fails with E11000 and is counted as a duplicate, not an error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from chat.serialization import Attachment, MessageFrame, Priority
from chat.timestamps import datetime_to_ms, ms_to_datetime

COLLECTION = "messages"
#: (keys, options). The unique (chat_id, seq) index also serves history and resume.
INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    ([("chat_id", ASCENDING), ("seq", ASCENDING)], {"unique": True, "name": "chat_seq"}),
]
DUPLICATE_KEY = 11000
#: Path under which the gateway serves (redirects to) an attachment by key.
ATTACHMENT_URL_PREFIX = "/api/v1/attachments/"


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    key: str
    content_type: str
    size: int


class NewMessage(msgspec.Struct, frozen=True):
    """Everything persisted for one message (the worker builds these).

    A frozen msgspec struct rather than a frozen dataclass: the worker builds one per
    message, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    costs ~3 us of the worker's ~20 us per-message budget; this costs ~0.3 us.
    """

    id: str
    chat_id: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    attachments: Sequence[StoredAttachment]
    priority: Priority


@dataclass(slots=True)
class InsertOutcome:
    """``failed``: indices into the batch rejected for reasons other than duplication
    (poison: dead-letter them)."""

    inserted: int = 0
    duplicates: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


def to_document(m: NewMessage, persisted_at: datetime) -> dict[str, Any]:
    return {
        "_id": m.id,
        "chat_id": m.chat_id,
        "seq": m.seq,
        "ts": ms_to_datetime(m.ts),
        "sender_id": m.sender_id,
        "sender_name": m.sender_name,
        "text": m.text,
        "attachments": [
            {"key": a.key, "content_type": a.content_type, "size": a.size} for a in m.attachments
        ],
        "priority": m.priority,
        "persisted_at": persisted_at,
    }


def attachment_url(key: str) -> str:
    return ATTACHMENT_URL_PREFIX + key


def from_document(doc: Mapping[str, Any]) -> MessageFrame:
    return MessageFrame(
        id=doc["_id"],
        chat_id=doc["chat_id"],
        seq=doc["seq"],
        ts=datetime_to_ms(doc["ts"]),
        sender_id=doc["sender_id"],
        sender_name=doc.get("sender_name", ""),
        text=doc["text"],
        attachments=[
            Attachment(
                key=a["key"],
                url=attachment_url(a["key"]),
                content_type=a.get("content_type", "application/octet-stream"),
                size=a.get("size", 0),
            )
            for a in doc.get("attachments", ())
        ],
        priority=doc.get("priority", "bulk"),
    )


def connect(url: str, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client with the options this code relies on (tz-aware dates)."""
    options.setdefault("tz_aware", True)
    options.setdefault("serverSelectionTimeoutMS", 5000)
    options.setdefault("connectTimeoutMS", 5000)
    options.setdefault("appname", "chat-platform")
    return AsyncMongoClient(url, **options)


class MessageStore:
    """The message collection behind one small interface (benchmarks time it)."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db_name: str) -> None:
        self._client = client
        self._coll: AsyncCollection[dict[str, Any]] = client[db_name][COLLECTION]

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self._coll

    async def ensure_indexes(self) -> None:
        """Idempotent: creating an existing index with the same options is a no-op."""
        for keys, options in INDEXES:
            await self._coll.create_index(keys, **options)

    async def ping(self) -> None:
        await self._client.admin.command("ping")

    async def insert(self, messages: Sequence[NewMessage]) -> InsertOutcome:
        """Insert a batch unordered. Duplicates (redelivery) count as done. Connection
        errors propagate: the caller keeps the entries pending and retries."""
        outcome = InsertOutcome()
        if not messages:
            return outcome
        now = datetime.now(UTC)
        docs = [to_document(m, now) for m in messages]
        started = time.perf_counter()
        try:
            result = await self._coll.insert_many(docs, ordered=False)
            outcome.inserted = len(result.inserted_ids)
        except BulkWriteError as e:
            details = e.details
            outcome.inserted = details.get("nInserted", 0)
            for err in details.get("writeErrors", ()):
                if err.get("code") == DUPLICATE_KEY:
                    outcome.duplicates += 1
                else:
                    outcome.failed.append((err["index"], f"{err.get('code')}: {err.get('errmsg')}"))
            if details.get("writeConcernErrors"):
                raise
        finally:
            outcome.seconds = time.perf_counter() - started
        return outcome

    async def after_seq(self, chat_id: int, after_seq: int, limit: int) -> list[MessageFrame]:
        """Messages with seq > after_seq, ascending (resume, catch-up)."""
        cursor = self._coll.find(
            {"chat_id": chat_id, "seq": {"$gt": after_seq}},
            sort=[("seq", ASCENDING)],
            limit=limit,
        )
        return [from_document(d) async for d in cursor]

    async def before_seq(
        self, chat_id: int, before_seq: int | None, limit: int
    ) -> list[MessageFrame]:
        """The ``limit`` messages just before ``before_seq`` (latest if None), ascending."""
        query: dict[str, Any] = {"chat_id": chat_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        cursor = self._coll.find(query, sort=[("seq", DESCENDING)], limit=limit)
        docs = [d async for d in cursor]
        docs.reverse()
        return [from_document(d) for d in docs]

    async def between(
        self, chat_id: int, after_seq: int | None, before_seq: int | None, limit: int
    ) -> list[MessageFrame]:
        """The HTTP listing: after_seq wins (ascending page), else before_seq (latest)."""
        if after_seq is not None:
            msgs = await self.after_seq(chat_id, after_seq, limit)
            if before_seq is not None:
                msgs = [m for m in msgs if m.seq < before_seq]
            return msgs
        return await self.before_seq(chat_id, before_seq, limit)
