"""Operator tool for the dead-letter streams ``chat:{p}:dead`` (docs/operations.md).

An entry lands there (moved atomically by :mod:`chat.consumer`) with ``src`` (its id in
the class stream), ``stream`` (that stream's key), ``reason``, ``consumer``,
``deliveries`` and the original fields ``m`` (body), ``s`` (seq), ``t`` (ts)::

    python -m chat.deadletter list   [--partition P] [--limit N]
    python -m chat.deadletter replay [--partition P] [--reason PREFIX] [--limit N] [--yes]
    python -m chat.deadletter purge  [--partition P] [--reason PREFIX] [--limit N] --yes

``replay`` puts an entry back on its class stream with its original ``seq`` and ``ts``
(they were assigned at accept time and must not change) and removes it from the dead
stream, both in one script: a replayed message is persisted exactly once because the
insert is idempotent. Replay after fixing the cause (a Mongo validator, a bug); an entry
that is still poison comes back. ``purge`` deletes entries for good: the message is lost,
so it asks for ``--yes``.

Cluster-safe: the dead stream and the class stream of an entry share the partition's
hash tag; the script refuses a ``stream`` field outside the partition.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from chat.config import Settings, load_settings
from chat.errors import ConfigError
from chat.keys import KeySpace, PartitionKeys
from chat.redisconn import connect

#: Move one dead entry back to its class stream. KEYS: dead, live, bulk. ARGV: dead id.
#: Returns the new stream id, or '' when the entry is gone (already replayed).
REPLAY_LUA = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return '' end
local f = rows[1][2]
local info = {}
for i = 1, #f, 2 do info[f[i]] = f[i + 1] end
local target = info['stream']
if target ~= KEYS[2] and target ~= KEYS[3] then
  return redis.error_reply('dead entry ' .. ARGV[1] .. ' names a stream outside its partition')
end
local id = redis.call('XADD', target, '*', 'm', info['m'], 's', info['s'], 't', info['t'])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""

PAGE = 500


@dataclass(frozen=True, slots=True)
class DeadEntry:
    partition: int
    id: str
    stream: str
    reason: str
    deliveries: int
    seq: str
    ts: str
    body: bytes


def _entry(partition: int, sid: bytes, fields: dict[bytes, bytes]) -> DeadEntry:
    return DeadEntry(
        partition=partition,
        id=sid.decode(),
        stream=fields.get(b"stream", b"").decode(),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
        deliveries=int(fields.get(b"deliveries", b"0") or 0),
        seq=fields.get(b"s", b"").decode(),
        ts=fields.get(b"t", b"").decode(),
        body=fields.get(b"m", b""),
    )


class DeadLetters:
    """Read, replay and purge the dead-letter streams of one deployment."""

    def __init__(self, redis: Any, keyspace: KeySpace) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._replay = redis.register_script(REPLAY_LUA)

    def _parts(self, partition: int | None) -> list[PartitionKeys]:
        if partition is None:
            return self._keyspace.all()
        return [self._keyspace.partition(partition)]

    async def entries(
        self, partition: int | None = None, reason: str = "", limit: int | None = None
    ) -> AsyncIterator[DeadEntry]:
        """Dead entries oldest first, per partition, optionally by reason prefix."""
        seen = 0
        for part in self._parts(partition):
            start = "-"
            while True:
                rows = await self._redis.xrange(part.dead, start, "+", count=PAGE)
                for sid, fields in rows:
                    entry = _entry(part.partition, sid, fields)
                    if not entry.reason.startswith(reason):
                        continue
                    yield entry
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
                if len(rows) < PAGE:
                    break
                start = "(" + rows[-1][0].decode()

    async def count(self) -> int:
        return sum([int(await self._redis.xlen(p.dead)) for p in self._keyspace.all()])

    async def replay(self, entry: DeadEntry) -> bool:
        """Put ``entry`` back on its class stream; False if it was already gone."""
        part = self._keyspace.partition(entry.partition)
        new_id = await self._replay(keys=[part.dead, part.live, part.bulk], args=[entry.id])
        return bool(new_id)

    async def purge(self, entry: DeadEntry) -> bool:
        part = self._keyspace.partition(entry.partition)
        return bool(await self._redis.xdel(part.dead, entry.id))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    redis = connect(settings)
    tool = DeadLetters(redis, KeySpace(settings.redis_key_prefix, settings.stream_partitions))
    try:
        done = 0
        async for entry in tool.entries(args.partition, args.reason, args.limit):
            if args.command == "list":
                print(
                    f"p={entry.partition} id={entry.id} seq={entry.seq} ts={entry.ts} "
                    f"deliveries={entry.deliveries} stream={entry.stream} reason={entry.reason}"
                )
                done += 1
            elif args.command == "replay":
                done += await tool.replay(entry)
            else:
                done += await tool.purge(entry)
        verb = {"list": "listed", "replay": "replayed", "purge": "purged"}[args.command]
        print(f"{verb} {done}; {await tool.count()} left in dead-letter streams", file=sys.stderr)
        return 0
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.deadletter", description=__doc__)
    parser.add_argument("command", choices=["list", "replay", "purge"])
    parser.add_argument("--partition", type=int, help="one partition (default: all)")
    parser.add_argument("--reason", default="", help="only entries whose reason starts so")
    parser.add_argument("--limit", type=int, help="at most this many entries")
    parser.add_argument("--yes", action="store_true", help="confirm replay/purge")
    args = parser.parse_args(argv)
    if args.command != "list" and not args.yes:
        parser.error(f"{args.command} changes the streams: add --yes")
    try:
        settings = load_settings()
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
