"""Fan-out: worker/priority -> gateways over ZeroMQ, with no Redis traffic per message.

Topology. Each gateway *binds* a SUB socket and advertises ``tcp://host:port`` in a Redis
sorted set (score = expiry, refreshed by a heartbeat). Each publisher (worker, priority)
has one PUB socket that *connects* to every live gateway it finds in that registry and
re-reads it every few seconds, so a gateway that starts later is found without restarts.

Filtering happens at the publisher: a SUB's subscriptions travel upstream over TCP, so a
gateway receives only the chats it subscribed to (chats with a connected local member).
Topics are ``b"<chat_id>|"``: the terminator stops prefix matches (chat 1 vs chat 12).

Trade-offs (written down because they are the point of this module):

* A PUB never blocks: when a gateway is slower than the flow, messages to it beyond
  ``SNDHWM`` are dropped *for that gateway only*. Storage is unaffected (the message is
  already in MongoDB); the client sees a ``seq`` gap and fills it with ``resume``. One
  slow gateway therefore never stalls a worker or the other gateways.
* Subscriptions need a moment to propagate after a connect ("slow joiner"): messages
  published in that window are missed by that gateway; its clients' ``hello``/``resume``
  covers the window.
* The payload is the final ``message`` frame JSON, encoded once by the publisher; the
  gateway forwards the bytes to every local member without decoding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from chat.keys import KeySpace
from chat.lifecycle import wait_stopped

log = logging.getLogger(__name__)

#: Per-peer queue on both sides. At ~50k msg/s to one gateway this is ~2 s of burst.
HWM = 100_000
#: How often a publisher re-reads the registry; a new gateway waits at most this long.
REFRESH_S = 2.0


_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


def topic(chat_id: int) -> bytes:
    return b"%d|" % chat_id


def chat_of_topic(value: bytes) -> int:
    return int(value[:-1])


class GatewayRegistry:
    """The Redis sorted set of live gateways' fan-out endpoints."""

    def __init__(self, redis: Any, keyspace: KeySpace, ttl_s: float) -> None:
        self._redis = redis
        self._key = keyspace.fanout_registry
        self.ttl_s = ttl_s

    async def announce(self, endpoint: str) -> None:
        expires = int((time.time() + self.ttl_s) * 1000)
        await self._redis.zadd(self._key, {endpoint: expires})

    async def withdraw(self, endpoint: str) -> None:
        await self._redis.zrem(self._key, endpoint)

    async def live(self) -> set[str]:
        now = int(time.time() * 1000)
        members = await self._redis.zrangebyscore(self._key, now, "+inf")
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def prune(self) -> int:
        now = int(time.time() * 1000)
        return int(await self._redis.zremrangebyscore(self._key, "-inf", now))


class Publisher:
    """One PUB socket connected to every live gateway. Not thread-safe; one per process."""

    def __init__(self, registry: GatewayRegistry, *, context: zmq.asyncio.Context | None = None):
        self._registry = registry
        self._ctx = context or zmq.asyncio.Context.instance()
        # A plain (blocking-API) socket, not the asyncio one: a PUB never waits, and the
        # asyncio wrapper's per-send future bookkeeping costs ~3 us per message.
        self._sock: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 200)
        self._peers: set[str] = set()
        self.published = 0

    @property
    def peers(self) -> frozenset[str]:
        return frozenset(self._peers)

    async def refresh(self) -> None:
        """Connect to new gateways, disconnect from gone ones."""
        live = await self._registry.live()
        for endpoint in sorted(live - self._peers):
            self._sock.connect(endpoint)
            log.info("fanout peer connected", extra={"endpoint": endpoint})
        for endpoint in sorted(self._peers - live):
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disconnect(endpoint)
            log.info("fanout peer dropped", extra={"endpoint": endpoint})
        self._peers = live

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the peer set every REFRESH_S until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception:  # Redis blip: keep the peers we have
                log.warning("fanout registry refresh failed", exc_info=True)
            await wait_stopped(stop, REFRESH_S)

    def publish(self, chat_id: int, payload: bytes) -> None:
        """Queue one message for every subscribed gateway; never blocks."""
        try:
            # Two sends with int flags: send_multipart's enum arithmetic costs more than
            # the send. copy=True: for frames of a few hundred bytes zero-copy is slower.
            self._sock.send(topic(chat_id), _MORE)
            self._sock.send(payload, _LAST)
            self.published += 1
        except zmq.Again:  # every peer at HWM: counted, recovered by resume
            log.debug("fanout dropped", extra={"chat_id": chat_id})

    def close(self) -> None:
        self._sock.close(linger=0)


class Subscriber:
    """A gateway's SUB socket: bound, advertised, subscribed per chat with refcounts."""

    def __init__(
        self,
        registry: GatewayRegistry,
        *,
        bind_host: str,
        port: int,
        advertise_host: str,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self._registry = registry
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, HWM)
        self._sock.setsockopt(zmq.LINGER, 0)
        if port == 0:
            port = self._sock.bind_to_random_port(f"tcp://{bind_host}")
        else:
            self._sock.bind(f"tcp://{bind_host}:{port}")
        self.endpoint = f"tcp://{advertise_host}:{port}"
        self._refs: dict[int, int] = {}

    def subscribe(self, chat_id: int) -> None:
        n = self._refs.get(chat_id, 0)
        if n == 0:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic(chat_id))
        self._refs[chat_id] = n + 1

    def unsubscribe(self, chat_id: int) -> None:
        n = self._refs.get(chat_id, 0)
        if n <= 1:
            self._refs.pop(chat_id, None)
            if n == 1:
                self._sock.setsockopt(zmq.UNSUBSCRIBE, topic(chat_id))
        else:
            self._refs[chat_id] = n - 1

    @property
    def subscribed(self) -> frozenset[int]:
        return frozenset(self._refs)

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Keep the registry entry fresh until ``stop``; withdraw it on the way out."""
        interval = self._registry.ttl_s / 3
        try:
            while not stop.is_set():
                try:
                    await self._registry.announce(self.endpoint)
                    await self._registry.prune()
                except Exception:
                    log.warning("fanout heartbeat failed", exc_info=True)
                await wait_stopped(stop, interval)
        finally:
            try:
                await self._registry.withdraw(self.endpoint)
            except Exception:
                log.warning("fanout withdraw failed", exc_info=True)

    async def run(
        self, stop: asyncio.Event, deliver: Callable[[int, bytes], Awaitable[None] | None]
    ) -> None:
        """Receive until ``stop``; ``deliver(chat_id, payload)`` must not block for long."""
        poller = zmq.asyncio.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not stop.is_set():
            events = await poller.poll(timeout=200)
            if not events:
                continue
            # Drain everything queued before yielding back to the loop: one wakeup, many
            # messages, which is where the per-delivery cost goes down under load.
            for _ in range(10_000):
                try:
                    t, payload = await self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                result = deliver(chat_of_topic(t), payload)
                if result is not None:
                    await result

    def close(self) -> None:
        self._sock.close(linger=0)
