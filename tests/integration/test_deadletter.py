"""The dead-letter operator tool against a real Redis."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from chat.config import Settings
from chat.consumer import DEAD_LETTER_LUA, FORGET_LUA
from chat.deadletter import DeadLetters
from chat.keys import BULK_GROUP, KeySpace


async def _dead_letter_three(redis: Any, keyspace: KeySpace) -> list[bytes]:
    """Three entries moved to chat:{0}:dead by the consumer's own script."""
    part = keyspace.partition(0)
    await redis.xgroup_create(part.bulk, BULK_GROUP, id="0", mkstream=True)
    ids = [
        await redis.xadd(part.bulk, {"m": f'["x{i}"]', "s": str(i), "t": str(1000 + i)})
        for i in (1, 2, 3)
    ]
    await redis.xreadgroup(BULK_GROUP, "c1", {part.bulk: ">"}, count=10)
    script = redis.register_script(DEAD_LETTER_LUA)
    args: list[Any] = [BULK_GROUP, "c1"]
    for n, sid in enumerate(ids, start=1):
        reason = "malformed: bad" if n < 3 else "rejected by store: 121"
        args += [sid, reason, 1, 3, "m", f'["x{n}"]', "s", str(n), "t", str(1000 + n)]
    assert await script(keys=[part.bulk, part.dead], args=args) == 3
    return ids


async def test_replay_restores_seq_ts_and_body_and_empties_dead(
    redis: Any, settings: Settings
) -> None:
    """Replay puts entries back on their class stream with the original seq, ts and body,
    filtered by reason, and removes them from the dead stream once (twice is a no-op)."""
    keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
    await _dead_letter_three(redis, keyspace)
    part = keyspace.partition(0)
    assert (await redis.xpending(part.bulk, BULK_GROUP))["pending"] == 0  # moved = acked
    tool = DeadLetters(redis, keyspace)
    malformed = [e async for e in tool.entries(reason="malformed")]
    assert [e.seq for e in malformed] == ["1", "2"]
    for e in malformed:
        assert await tool.replay(e)
        assert not await tool.replay(e)
    assert await tool.count() == 1
    replayed = [f for _, f in await redis.xrange(part.bulk, "-", "+")][-2:]
    assert [(f[b"s"], f[b"t"], f[b"m"]) for f in replayed] == [
        (b"1", b"1001", b'["x1"]'),
        (b"2", b"1002", b'["x2"]'),
    ]
    (rest,) = [e async for e in tool.entries()]
    assert await tool.purge(rest)
    assert await tool.count() == 0


def test_cli_lists_and_refuses_changes_without_yes(settings: Settings) -> None:
    """`python -m chat.deadletter` lists; replay/purge without --yes exit 2, untouched."""
    env = {
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "STREAM_PARTITIONS": str(settings.stream_partitions),
        "PATH": "",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "chat.deadletter", "purge"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "chat.deadletter", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "listed 0; 0 left" in listed.stderr


async def test_idle_consumers_holding_nothing_are_forgotten(redis: Any, settings: Settings) -> None:
    """The reclaim run's script removes group members that hold nothing and are idle past
    the threshold; a member with pending entries, and this consumer, always stay."""
    part = KeySpace(settings.redis_key_prefix, settings.stream_partitions).partition(1)
    await redis.xgroup_create(part.bulk, BULK_GROUP, id="0", mkstream=True)
    await redis.xgroup_createconsumer(part.bulk, BULK_GROUP, "ghost")
    await redis.xgroup_createconsumer(part.bulk, BULK_GROUP, "me")
    await redis.xadd(part.bulk, {"m": "[]", "s": "1", "t": "1"})
    await redis.xreadgroup(BULK_GROUP, "holder", {part.bulk: ">"}, count=1)
    forget = redis.register_script(FORGET_LUA)
    assert await forget(keys=[part.bulk], args=[BULK_GROUP, "me", 3_600_000]) == 0
    assert await forget(keys=[part.bulk], args=[BULK_GROUP, "me", 0]) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(part.bulk, BULK_GROUP)}
    assert names == {b"me", b"holder"} or names == {"me", "holder"}
