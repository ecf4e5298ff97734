"""chat.metrics.observe_many: the consumer's batched latency observation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from chat.metrics import observe_many


def samples(h: Histogram, registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.name + s.labels.get("le", ""): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_equals_one_observe_per_value() -> None:
    """Bucket counts, count and sum match observe() called per value, including values
    exactly on a bucket bound and past the last finite bound."""
    values = [0.0, 0.001, 0.0011, 0.05, 0.3, 2.5, 11.0, 0.001]
    buckets = (0.001, 0.01, 0.1, 1.0, 2.5)
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    one = Histogram("lat_seconds", "x", buckets=buckets, registry=reg_a)
    many = Histogram("lat_seconds", "x", buckets=buckets, registry=reg_b)
    for v in values:
        one.observe(v)
    observe_many(many, values)
    assert samples(many, reg_b) == samples(one, reg_a)
    assert samples(many, reg_b)["lat_seconds_count"] == len(values)
