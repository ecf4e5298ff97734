"""MongoDB message store and SQL directory against the real servers."""

from __future__ import annotations

import secrets

import pytest

from chat.errors import Conflict
from chat.storage.mongo import MessageStore, NewMessage, StoredAttachment
from chat.storage.sql import Directory


def new(chat_id: int, seq: int, *, mid: str | None = None) -> NewMessage:
    return NewMessage(
        id=mid or f"m-{chat_id}-{seq}-{secrets.token_hex(3)}",
        chat_id=chat_id,
        seq=seq,
        ts=1_763_913_600_000 + seq,
        sender_id=5,
        sender_name="Ada",
        text=f"text {seq}",
        attachments=[StoredAttachment("5/k", "image/png", 10)] if seq == 1 else [],
        priority="live",
    )


async def test_insert_is_idempotent_under_redelivery(message_store: MessageStore) -> None:
    """Inserting the same batch twice stores each message once; the rest count as duplicates."""
    batch = [new(1, s) for s in range(1, 11)]
    first = await message_store.insert(batch)
    assert (first.inserted, first.duplicates, first.failed) == (10, 0, [])
    again = await message_store.insert([*batch[5:], new(1, 11)])
    assert (again.inserted, again.duplicates) == (1, 5)
    assert await message_store.collection.count_documents({"chat_id": 1}) == 11


async def test_same_seq_with_other_id_is_rejected(message_store: MessageStore) -> None:
    """The unique (chat_id, seq) index refuses a second message with a taken seq."""
    await message_store.insert([new(2, 1)])
    outcome = await message_store.insert([new(2, 1)])
    assert outcome.inserted == 0
    assert outcome.duplicates == 1
    assert await message_store.collection.count_documents({"chat_id": 2}) == 1


async def test_history_queries_return_ascending_seq(message_store: MessageStore) -> None:
    """after_seq, before_seq and between page through a chat in seq order."""
    await message_store.insert([new(3, s) for s in range(1, 21)])
    await message_store.insert([new(4, s) for s in range(1, 4)])
    assert [m.seq for m in await message_store.after_seq(3, 15, 50)] == [16, 17, 18, 19, 20]
    assert [m.seq for m in await message_store.before_seq(3, None, 3)] == [18, 19, 20]
    assert [m.seq for m in await message_store.before_seq(3, 5, 10)] == [1, 2, 3, 4]
    assert [m.seq for m in await message_store.between(3, 2, 6, 50)] == [3, 4, 5]
    (first,) = await message_store.after_seq(3, 0, 1)
    assert first.ts == 1_763_913_600_001
    assert first.attachments[0].url == "/api/v1/attachments/5/k"
    assert first.sender_name == "Ada"


async def test_directory_users_chats_members(directory: Directory) -> None:
    """Users are unique by e-mail; chats include their creator; membership is queryable."""
    tag = secrets.token_hex(4)
    a = await directory.create_user(
        email=f"A{tag}@x.test", password_hash="h", name="A", kind="human"
    )
    b = await directory.create_user(email=f"b{tag}@x.test", password_hash="h", name="B", kind="bot")
    with pytest.raises(Conflict):
        await directory.create_user(
            email=f"a{tag}@x.test", password_hash="h", name="A", kind="human"
        )
    chat = await directory.create_chat(title="t", creator_id=a, member_ids=[b])
    assert await directory.member_ids(chat) == {a, b}
    assert [c.id for c in await directory.chats_of(b)] == [chat]
    user = await directory.user_by_email(f"a{tag}@X.TEST")
    assert user is not None
    assert user.id == a
    with pytest.raises(Conflict):
        await directory.create_chat(title="t", creator_id=a, member_ids=[10**12])
    c = await directory.create_user(
        email=f"c{tag}@x.test", password_hash="h", name="C", kind="human"
    )
    assert await directory.add_members(chat, [c, b]) == sorted([a, b, c])
    names = await directory.users_by_id([a, c])
    assert {u.name for u in names.values()} == {"A", "C"}
