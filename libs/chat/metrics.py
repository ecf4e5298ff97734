"""Prometheus metrics shared by every service (one registry per process).

Names are part of the operations contract (dashboards, alarms, the load-test report):
rename one and docs/operations.md and infra/components/observability.py change with it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Latency buckets (seconds) from 1 ms to 10 s: live p99 target is 50 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ENQUEUED = Counter("chat_enqueued_total", "Messages accepted (acked) by a gateway.", ["priority"])
ENQUEUE_REJECTED = Counter(
    "chat_enqueue_rejected_total", "Sends refused: backlog full or Redis down.", ["reason"]
)
DUPLICATE_SENDS = Counter("chat_duplicate_sends_total", "Resends answered with the original ack.")
PERSISTED = Counter("chat_persisted_total", "Messages inserted into MongoDB.", ["priority"])
PERSIST_DUPLICATES = Counter(
    "chat_persist_duplicates_total", "Redelivered entries already stored (idempotent no-op)."
)
DEAD_LETTERED = Counter(
    "chat_dead_lettered_total", "Entries moved to the dead-letter stream.", ["reason"]
)
RECLAIMED = Counter("chat_reclaimed_total", "Entries reclaimed from dead consumers.")
STORE_RETRIES = Counter(
    "chat_store_retries_total", "Batch retries while a database was unavailable.", ["store"]
)
PUBLISHED = Counter("chat_published_total", "Messages published on the fan-out.")
BATCH_SIZE = Histogram(
    "chat_batch_size", "Entries per consumer batch.", buckets=(1, 10, 50, 100, 250, 500, 1000)
)
STAGE_SECONDS = Histogram(
    "chat_stage_seconds", "Time per batch stage.", ["stage"], buckets=LATENCY_BUCKETS
)
ACCEPT_TO_PUBLISH = Histogram(
    "chat_accept_to_publish_seconds",
    "From enqueue ts to fan-out publish.",
    ["priority"],
    buckets=LATENCY_BUCKETS,
)
BATCH_TARGET = Gauge(
    "chat_batch_target",
    "Current batch size (XREADGROUP COUNT) of the consumer; adapts to the insert budget.",
    ["priority"],
)
BULK_DB_SHARE = Gauge(
    "chat_bulk_db_share",
    "Share of wall time the worker's inserts may keep the database busy (1 = all;"
    " lower while live inserts are over BULK_YIELD_TARGET_MS).",
)
LIVE_PRESSURE_MS = Gauge(
    "chat_live_pressure_ms",
    "Mean live insert time the priority service last reported, as the worker read it"
    " (0: no live traffic reported).",
)
BULK_YIELDED = Counter(
    "chat_bulk_yielded_seconds_total",
    "Time the worker held an insert back to leave the database to live inserts.",
)
STREAM_LAG = Gauge("chat_stream_lag_entries", "Entries not yet acknowledged.", ["priority"])
WS_CONNECTIONS = Gauge("chat_ws_connections", "Open WebSocket connections.")
DELIVERED = Counter("chat_delivered_total", "message frames queued to WebSocket clients.")
SLOW_CLIENT_CLOSES = Counter(
    "chat_slow_client_disconnects_total", "Connections closed because their buffer was full."
)
WS_ERRORS = Counter("chat_ws_errors_total", "error frames sent.", ["code"])


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition body and its content type (``/metrics``)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, at one lock round trip per touched
    bucket instead of two per value (the consumer observes one latency per message:
    ~2 us each with ``observe``, a tenth of its per-message budget).

    Reads prometheus_client's histogram internals (pinned version); if they are not
    there, falls back to one ``observe`` per value, so it can only get slower, not wrong.
    """
    bounds: list[float] | None = getattr(histogram, "_upper_bounds", None)
    buckets: list[Any] | None = getattr(histogram, "_buckets", None)
    total: Any = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            histogram.observe(v)
        return
    counts = [0] * len(bounds)
    acc = 0.0
    for v in values:
        counts[bisect_left(bounds, v)] += 1  # first bound >= v: observe()'s `v <= bound`
        acc += v
    total.inc(acc)
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
