"""The enqueue script against a real Redis: seq, ts, idempotency, backpressure, slots."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from chat.config import Settings
from chat.errors import Unavailable
from chat.ids import new_message_id
from chat.keys import KeySpace, partition_of
from chat.localstack import EmbeddedRedis, free_port
from chat.serialization import QueuedMessage, decode_queued
from chat.streams import Accepted, BatchingEnqueuer, Enqueuer


def msg(chat_id: int, *, client_id: str | None = None, priority: str = "bulk") -> QueuedMessage:
    return QueuedMessage(
        id=new_message_id(),
        chat_id=chat_id,
        sender_id=7,
        text=f"hello {chat_id}",
        attachments=[],
        priority=priority,  # type: ignore[arg-type]
        client_id=client_id,
    )


def make(redis: Any, settings: Settings, max_len: int = 1_000_000) -> Enqueuer:
    keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
    return Enqueuer(redis, keyspace, idempotency_ttl_s=600, max_len=max_len)


async def test_seq_contiguous_and_ts_monotonic_under_concurrent_enqueuers(
    redis: Any, settings: Settings
) -> None:
    """Eight concurrent enqueuers over five chats: every chat's seqs are 1..N with no gap
    or duplicate, and ts never decreases in seq order."""
    enq = make(redis, settings)

    async def producer() -> list[Accepted]:
        out: list[Accepted] = []
        for _ in range(25):
            batch = [msg(c) for c in (1, 2, 3, 4, 5) for _ in range(4)]
            out += [r for r in await enq.enqueue(batch) if isinstance(r, Accepted)]
        return out

    results = [r for rs in await asyncio.gather(*(producer() for _ in range(8))) for r in rs]
    assert len(results) == 8 * 25 * 20
    for chat in (1, 2, 3, 4, 5):
        mine = sorted((r for r in results if r.chat_id == chat), key=lambda r: r.seq)
        assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
        assert all(a.ts <= b.ts for a, b in itertools.pairwise(mine))


async def test_entries_carry_seq_ts_and_body(redis: Any, settings: Settings) -> None:
    """The stream entry holds the msgpack body plus the seq and ts the ack reported."""
    enq = make(redis, settings)
    m = msg(42, priority="live")
    (acc,) = await enq.enqueue([m])
    assert isinstance(acc, Accepted)
    part = KeySpace(settings.redis_key_prefix, settings.stream_partitions).for_chat(42)
    ((_, fields),) = await redis.xrange(part.live)
    assert decode_queued(fields[b"m"]) == m
    assert (int(fields[b"s"]), int(fields[b"t"])) == (acc.seq, acc.ts)
    assert await redis.xlen(part.bulk) == 0


async def test_resend_with_same_client_id_returns_original_ack(
    redis: Any, settings: Settings
) -> None:
    """A resend with the same (sender, client_id) returns the first ack, stores nothing."""
    enq = make(redis, settings)
    first = (await enq.enqueue([msg(9, client_id="c-1")]))[0]
    again = await enq.enqueue([msg(9, client_id="c-1"), msg(9, client_id="c-2")])
    assert isinstance(first, Accepted)
    assert isinstance(again[0], Accepted)
    assert again[0].duplicate
    assert (again[0].id, again[0].seq, again[0].ts) == (first.id, first.seq, first.ts)
    assert isinstance(again[1], Accepted)
    assert again[1].seq == 2
    part = KeySpace(settings.redis_key_prefix, settings.stream_partitions).for_chat(9)
    assert await redis.xlen(part.bulk) == 2


async def test_backlog_cap_refuses_without_storing(redis: Any, settings: Settings) -> None:
    """Past STREAM_MAX_LEN the script answers unavailable and assigns no seq."""
    enq = make(redis, settings, max_len=3)
    results = await enq.enqueue([msg(5) for _ in range(5)])
    assert [isinstance(r, Accepted) for r in results] == [True, True, True, False, False]
    assert isinstance(results[3], Unavailable)
    part = KeySpace(settings.redis_key_prefix, settings.stream_partitions).for_chat(5)
    assert int(await redis.hget(part.seq, "5")) == 3


async def test_batching_enqueuer_coalesces_one_tick(redis: Any, settings: Settings) -> None:
    """Sends awaited in the same tick share one script call and keep their own results."""
    enq = make(redis, settings)
    calls = 0
    original = enq._run_partition

    async def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args)

    enq._run_partition = counting  # type: ignore[method-assign,assignment]
    batching = BatchingEnqueuer(enq)
    results = await asyncio.gather(*(batching.enqueue(msg(11)) for _ in range(50)))
    assert sorted(r.seq for r in results) == list(range(1, 51))
    assert calls == 1


def _gate(enq: Enqueuer, gate: asyncio.Event, priority: str = "bulk") -> None:
    """Make every script call that carries a ``priority`` message wait for ``gate``."""
    original = enq.enqueue

    async def gated(messages: Any) -> Any:
        if any(m.priority == priority for m in messages):
            await gate.wait()
        return await original(messages)

    enq.enqueue = gated  # type: ignore[method-assign]


async def test_live_send_is_not_queued_behind_a_bulk_batch(redis: Any, settings: Settings) -> None:
    """While a bulk batch is stuck in flight, a live send from another person is accepted;
    the bulk sends complete once released."""
    enq = make(redis, settings)
    gate = asyncio.Event()
    _gate(enq, gate)
    batching = BatchingEnqueuer(enq)
    bulk = [batching.submit(msg(21)) for _ in range(100)]
    await asyncio.sleep(0)
    live = await asyncio.wait_for(batching.enqueue(_from(msg(22, priority="live"), 8)), 5)
    assert live.seq == 1
    assert not any(f.done() for f in bulk)
    gate.set()
    assert sorted(r.seq for r in await asyncio.gather(*bulk)) == list(range(1, 101))


async def test_one_senders_order_holds_across_lanes(redis: Any, settings: Settings) -> None:
    """A person demoted to bulk then live again keeps send order: the live message waits
    for that sender's bulk messages and gets the next seq."""
    enq = make(redis, settings)
    gate = asyncio.Event()
    _gate(enq, gate)
    batching = BatchingEnqueuer(enq)
    first = batching.submit(msg(23))
    await asyncio.sleep(0)
    second = batching.submit(msg(23, priority="live"))
    await asyncio.sleep(0.05)
    assert not second.done()
    gate.set()
    a, b = await first, await second
    assert (a.seq, b.seq, b.priority) == (1, 2, "live")
    await batching.drain()


async def test_one_senders_bulk_waits_for_their_live_batch(redis: Any, settings: Settings) -> None:
    """The other direction: a person's burst is live until the budget runs out, then
    bulk. While their live batch is in flight, their bulk messages wait for it (seqs in
    send order) and still go to the bulk stream; another sender's bulk does not wait."""
    enq = make(redis, settings)
    gate = asyncio.Event()
    _gate(enq, gate, priority="live")
    batching = BatchingEnqueuer(enq)
    live = [batching.submit(msg(24, priority="live")) for _ in range(3)]
    await asyncio.sleep(0)
    demoted = [batching.submit(msg(24)) for _ in range(3)]
    other = await asyncio.wait_for(batching.enqueue(_from(msg(25), 9)), 5)
    assert other.seq == 1
    await asyncio.sleep(0.05)
    assert not any(f.done() for f in live + demoted)
    gate.set()
    results = await asyncio.gather(*live, *demoted)
    assert [r.seq for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.priority for r in results] == ["live"] * 3 + ["bulk"] * 3
    assert await redis.xlen(enq._parts[partition_of(24, settings.stream_partitions)].bulk) == 3
    await batching.drain()


def _from(message: QueuedMessage, sender_id: int) -> QueuedMessage:
    return msgspec.structs.replace(message, sender_id=sender_id)


@pytest.mark.parametrize("partitions", [1, 16, 1024])
def test_every_key_of_a_partition_shares_one_slot(partitions: int) -> None:
    """All keys a script or consumer touches together hash to one cluster slot."""
    keyspace = KeySpace("pfx:", partitions)
    for part in keyspace.all()[:64]:
        keys = [part.live, part.bulk, part.dead, part.seq, part.ts, part.idempotency_key(1, "c")]
        assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_odd_client_ids_and_large_chat_ids_round_trip(redis: Any, settings: Settings) -> None:
    """client_ids with spaces, newlines and non-ASCII, and chat ids near 2**53, keep
    their own seq counters and idempotency keys."""
    enq = make(redis, settings)
    big = 2**53 - 1
    odd = "a b\nc é:1"
    first = await enq.enqueue([msg(big, client_id=odd), msg(big, client_id=odd + " ")])
    again = await enq.enqueue([msg(big, client_id=odd)])
    assert [r.seq for r in first if isinstance(r, Accepted)] == [1, 2]
    assert isinstance(again[0], Accepted)
    assert again[0].duplicate
    assert again[0].seq == 1
    part = KeySpace(settings.redis_key_prefix, settings.stream_partitions).for_chat(big)
    assert await redis.hget(part.seq, str(big)) == b"2"
    assert await redis.exists(part.idempotency_key(7, odd)) == 1


def _spread(chats: range, per_chat: int, first: int = 0) -> list[QueuedMessage]:
    """``per_chat`` messages for each chat, interleaved as a gateway tick sees them."""
    return [msg(c, client_id=f"{c}-{i}") for i in range(first, first + per_chat) for c in chats]


def _check_per_chat_seqs(results: list[Accepted | Unavailable], per_chat: int) -> None:
    by_chat: dict[int, list[int]] = {}
    for r in results:
        assert isinstance(r, Accepted), r
        by_chat.setdefault(r.chat_id, []).append(r.seq)
    assert all(seqs == list(range(1, per_chat + 1)) for seqs in by_chat.values()), by_chat


async def test_a_batch_over_many_partitions_is_one_pipeline_and_survives_script_flush(
    redis: Any, settings: Settings
) -> None:
    """Against one server the partitions of a batch share one pipeline; after SCRIPT
    FLUSH (a restart or failover empties the script cache) every call answers NOSCRIPT
    and is loaded and run again, once: seqs stay 1..N per chat."""
    enq = make(redis, settings)
    assert enq._pipelined
    chats = range(300, 340)  # 40 chats over the partitions
    assert len({partition_of(c, settings.stream_partitions) for c in chats}) > 1
    await redis.script_flush()
    first = await enq.enqueue(_spread(chats, 2))
    second = await enq.enqueue(_spread(chats, 1, first=2))
    _check_per_chat_seqs(first + second, 3)


async def test_a_failing_partition_refuses_only_its_own_messages(
    redis: Any, settings: Settings
) -> None:
    """An error reply from one partition's script (here its seq hash is the wrong type)
    answers unavailable for that partition's messages; the other partitions' messages of
    the same pipelined batch are accepted."""
    enq = make(redis, settings)
    keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
    chats = range(400, 420)
    broken = keyspace.for_chat(400)
    await redis.set(broken.seq, "not a hash")
    results = await enq.enqueue(_spread(chats, 1))
    for chat, r in zip(chats, results, strict=True):
        if keyspace.for_chat(chat).seq == broken.seq:
            assert isinstance(r, Unavailable), r
        else:
            assert isinstance(r, Accepted), r
            assert r.seq == 1


def _cluster_capable_port() -> int:
    """A free loopback port whose cluster-bus port (+10,000) is free too."""
    for _ in range(100):
        port = free_port()
        if port <= 55535:
            with contextlib.suppress(OSError), socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
                return port
    raise RuntimeError("no free port pair for a cluster-mode redis-server")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    """A one-node Redis Cluster (every slot on one cluster-mode redis-server, loopback):
    the client code path AWS runs (REDIS_CLUSTER=true, ElastiCache cluster mode)."""
    node = EmbeddedRedis(
        tmp_path / "cluster",
        persistent=False,
        port=_cluster_capable_port(),
        extra_args=("--cluster-enabled", "yes",
                    "--cluster-config-file", str(tmp_path / "nodes.conf")),
    )  # fmt: skip
    node.start()
    try:
        admin: Any = aioredis.Redis(port=node.port)
        await admin.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        async with asyncio.timeout(20):
            while b"cluster_state:ok" not in await admin.execute_command("CLUSTER", "INFO"):  # noqa: ASYNC110 - polls the server
                await asyncio.sleep(0.05)
        await admin.aclose()
        client = RedisCluster(host="127.0.0.1", port=node.port)
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        node.stop()


async def test_cluster_client_enqueues_across_partitions_and_answers_resends(
    cluster: RedisCluster, settings: Settings
) -> None:
    """With a cluster client each partition's call is routed to its slot's node (no
    pipeline: redis-py refuses EVALSHA in cluster pipelines); seqs are 1..N per chat,
    a resend gets the original ack, and the batching enqueuer works on top of it."""
    enq = make(cluster, settings)
    assert not enq._pipelined
    chats = range(500, 530)
    _check_per_chat_seqs(await enq.enqueue(_spread(chats, 2)), 2)
    again = await enq.enqueue([msg(500, client_id="500-0")])
    assert isinstance(again[0], Accepted)
    assert (again[0].seq, again[0].duplicate) == (1, True)
    batching = BatchingEnqueuer(enq)
    more = await asyncio.gather(*(batching.enqueue(msg(c)) for c in chats))
    assert {r.seq for r in more} == {3}
