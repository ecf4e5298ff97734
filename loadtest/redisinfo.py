"""Redis observations for the results: stream backlog over time, XINFO/INFO snapshots,
and the per-chat seq counters the verifier compares with MongoDB.

Read-only, one pipeline per sample (2 x STREAM_PARTITIONS XINFO GROUPS), so sampling
once a second costs Redis nothing measurable next to the load.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from redis.exceptions import RedisError

from chat.keys import BULK_GROUP, LIVE_GROUP, KeySpace

log = logging.getLogger(__name__)

#: INFO sections kept in the snapshot (the rest is noise for a load-test report).
INFO_SECTIONS = ("server", "clients", "memory", "stats", "cpu", "persistence")
#: INFO fields shown in the report's table; the full sections stay in results.json.
INFO_HIGHLIGHTS = (
    "redis_version",
    "connected_clients",
    "used_memory_human",
    "used_memory_peak_human",
    "instantaneous_ops_per_sec",
    "total_commands_processed",
    "used_cpu_sys",
    "used_cpu_user",
    "evicted_keys",
    "rejected_connections",
)


def jsonable(value: Any) -> Any:
    """Redis replies (bytes, tuples, nested) as JSON-safe values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class RedisObserver:
    def __init__(self, redis: Any, keyspace: KeySpace) -> None:
        self._redis = redis
        self._keyspace = keyspace

    async def backlog(self) -> dict[str, int]:
        """Entries not yet acknowledged by each class's consumer group (lag + pending)."""
        parts = self._keyspace.all()
        pipe = self._redis.pipeline(transaction=False)
        streams: list[tuple[str, str]] = []
        for p in parts:
            for klass, stream in (("live", p.live), ("bulk", p.bulk)):
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
                streams.append((klass, stream))
        replies = await pipe.execute(raise_on_error=False)
        out: dict[str, int] = defaultdict(int)
        for i, (klass, _) in enumerate(streams):
            length, groups = replies[2 * i], replies[2 * i + 1]
            out[klass] += _backlog_of(klass, length, groups)
        return {"live": out["live"], "bulk": out["bulk"]}

    async def snapshot(self) -> dict[str, Any]:
        """XINFO STREAM and GROUPS of every partition stream, and INFO."""
        streams: dict[str, Any] = {}
        for p in self._keyspace.all():
            for stream in (p.live, p.bulk, p.dead):
                try:
                    info = await self._redis.xinfo_stream(stream)
                except RedisError:  # no such key: nothing was ever queued there
                    continue
                info.pop("first-entry", None)  # message bodies: not for the report
                info.pop("last-entry", None)
                groups = await self._redis.xinfo_groups(stream)
                streams[stream] = {"stream": jsonable(info), "groups": jsonable(groups)}
        info_all: dict[str, Any] = {}
        for section in INFO_SECTIONS:
            try:
                info_all.update(jsonable(await self._redis.info(section)))
            except RedisError:
                log.warning("redis INFO %s failed", section, exc_info=True)
        return {"streams": streams, "info": info_all}

    async def seq_counters(self, chat_ids: list[int]) -> dict[int, int]:
        """The last seq the enqueue script assigned to each chat (absent: none)."""
        by_key: dict[str, list[int]] = defaultdict(list)
        for chat_id in chat_ids:
            by_key[self._keyspace.for_chat(chat_id).seq].append(chat_id)
        pipe = self._redis.pipeline(transaction=False)
        order = list(by_key.items())
        for key, chats in order:
            pipe.hmget(key, [str(c) for c in chats])
        replies = await pipe.execute()
        out: dict[int, int] = {}
        for (_, chats), values in zip(order, replies, strict=True):
            for chat_id, value in zip(chats, values, strict=True):
                if value is not None:
                    out[chat_id] = int(value)
        return out


def _backlog_of(klass: str, length: Any, groups: Any) -> int:
    if isinstance(length, Exception) or not isinstance(length, int):
        return 0
    if isinstance(groups, Exception):
        return length
    wanted = LIVE_GROUP if klass == "live" else BULK_GROUP
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == wanted:
            lag = g.get("lag")
            pending = int(g.get("pending") or 0)
            return pending + (int(lag) if lag is not None else max(0, length - pending))
    return length  # no group yet: nothing consumed
