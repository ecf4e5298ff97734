"""Redis key names and partitioning: the cluster-safety contract (DESIGN.md invariant 5).

Every key that a command or script touches together carries the same hash tag, the
partition number in braces, so a whole enqueue batch or a consumer's read/ack/trim of one
partition lands in one hash slot of Redis Cluster::

    chat:{p}:live    stream, interactive messages (priority service's group)
    chat:{p}:bulk    stream, everything else (worker's group)
    chat:{p}:dead    stream, poison entries moved aside after MAX_DELIVERIES
    chat:{p}:seq     hash chat_id -> last assigned seq
    chat:{p}:ts      hash chat_id -> last assigned ts (ms); ts never goes backwards
    chat:{p}:cid:<sender_id>:<client_id>
                     string "id seq ts prio", TTL IDEMPOTENCY_TTL_S: resend returns the ack

and, outside the partitions, ``{fanout}:gateways`` (fan-out registry),
``{fanout}:membership`` (pub/sub channel) and ``{pressure}:live-insert-ms`` (live
pressure, :mod:`chat.pressure`), each used alone.

``partition = crc32(str(chat_id)) mod STREAM_PARTITIONS`` is a contract: the verifier and
the JMeter plans compute it too. Changing STREAM_PARTITIONS on a running system moves
chats to other partitions and restarts their seq counters: drain first (docs/operations.md).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: Consumer groups. One group per stream class; every consumer of a class joins it.
LIVE_GROUP = "priority"
BULK_GROUP = "worker"

#: Fan-out registry: one sorted set (member = tcp endpoint, score = expiry in ms).
#: Its own hash tag: it is read by every publisher, never in a script with other keys.
FANOUT_REGISTRY = "{fanout}:gateways"
#: Membership change notifications (Redis pub/sub), so gateways drop cached members.
MEMBERSHIP_CHANNEL = "{fanout}:membership"
#: Live pressure (chat.pressure): the worst recent mean live insert time in ms, written
#: by priority processes and read by workers. One key, only ever touched alone.
LIVE_PRESSURE = "{pressure}:live-insert-ms"


def partition_of(chat_id: int, partitions: int) -> int:
    """The contract: crc32 of the decimal chat id, modulo the partition count."""
    return zlib.crc32(str(chat_id).encode()) % partitions


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """The keys of one partition, all in one hash slot."""

    partition: int
    live: str
    bulk: str
    dead: str
    seq: str
    ts: str
    cid_prefix: str

    def stream(self, priority: str) -> str:
        return self.live if priority == "live" else self.bulk

    def idempotency_key(self, sender_id: int, client_id: str) -> str:
        return f"{self.cid_prefix}{sender_id}:{client_id}"


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key names for a deployment: a prefix (tests, side-by-side stacks) and a partition
    count."""

    prefix: str
    partitions: int

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("REDIS_KEY_PREFIX must not contain braces (it would move hash slots)")

    def partition(self, p: int) -> PartitionKeys:
        base = f"{self.prefix}chat:{{{p}}}:"
        return PartitionKeys(
            partition=p,
            live=base + "live",
            bulk=base + "bulk",
            dead=base + "dead",
            seq=base + "seq",
            ts=base + "ts",
            cid_prefix=base + "cid:",
        )

    def for_chat(self, chat_id: int) -> PartitionKeys:
        return self.partition(partition_of(chat_id, self.partitions))

    def all(self) -> list[PartitionKeys]:
        return [self.partition(p) for p in range(self.partitions)]

    @property
    def fanout_registry(self) -> str:
        return self.prefix + FANOUT_REGISTRY

    @property
    def membership_channel(self) -> str:
        return self.prefix + MEMBERSHIP_CHANNEL

    @property
    def live_pressure(self) -> str:
        return self.prefix + LIVE_PRESSURE
