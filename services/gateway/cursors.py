"""Each chat's ``last_seq``: the seq counter the enqueue script keeps in Redis.

``last_seq`` counts *accepted* messages (some may still be on their way to MongoDB), which
is what ``hello`` must report: a client whose cursor is below it knows it missed something
and sends ``resume``. One HMGET per partition hash, pipelined (cluster-safe: each command
touches one key).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chat.keys import KeySpace


async def last_seqs(redis: Any, keyspace: KeySpace, chat_ids: Iterable[int]) -> dict[int, int]:
    """``{chat_id: last_seq}`` (0 for a chat with no message yet)."""
    by_key: dict[str, list[int]] = {}
    for chat_id in chat_ids:
        by_key.setdefault(keyspace.for_chat(chat_id).seq, []).append(chat_id)
    if not by_key:
        return {}
    pipe = redis.pipeline(transaction=False)
    for key, chats in by_key.items():
        pipe.hmget(key, [str(c) for c in chats])
    replies = await pipe.execute()
    out: dict[int, int] = {}
    for chats, values in zip(by_key.values(), replies, strict=True):
        for chat_id, value in zip(chats, values, strict=True):
            out[chat_id] = int(value) if value is not None else 0
    return out
