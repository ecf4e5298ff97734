"""chat.consumer.BatchSizer: the AIMD controller of the bulk batch size, as pure logic."""

from __future__ import annotations

import pytest

from chat.consumer import BatchSizer, ConsumerOptions

BUDGET = 0.025


def test_starts_at_the_floor_with_a_budget_and_at_the_ceiling_without() -> None:
    """A budgeted sizer opens small (no batch-sized inserts after a restart); without a
    budget the size is the configured batch and never moves."""
    assert BatchSizer(low=20, high=500, budget_s=BUDGET).size == 20
    fixed = BatchSizer(low=20, high=500, budget_s=None)
    assert fixed.size == 500
    assert fixed.observe(10.0, 500) is False
    assert fixed.observe(0.0, 500) is False
    assert fixed.size == 500


def test_an_insert_over_budget_halves_the_size_down_to_the_floor() -> None:
    """Multiplicative decrease: each slow insert halves the size, never below ``low``."""
    sizer = BatchSizer(low=20, high=500, budget_s=BUDGET, size=400)
    sizes = []
    for _ in range(6):
        sizer.observe(BUDGET * 1.01, sizer.size)
        sizes.append(sizer.size)
    assert sizes == [200, 100, 50, 25, 20, 20]


def test_a_full_insert_under_half_the_budget_grows_the_size_by_a_quarter() -> None:
    """Increase: +25 % (at least one) per fast full insert, capped at ``high``."""
    sizer = BatchSizer(low=2, high=100, budget_s=BUDGET)
    sizes = []
    for _ in range(14):
        sizer.observe(BUDGET * 0.49, sizer.size)
        sizes.append(sizer.size)
    assert sizes == [3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 22, 27, 33, 41]
    for _ in range(20):
        sizer.observe(0.0, sizer.size)
    assert sizer.size == 100


def test_the_size_holds_between_half_the_budget_and_the_budget() -> None:
    """Inside [budget/2, budget] the size is right: no change, no metric update."""
    sizer = BatchSizer(low=10, high=500, budget_s=BUDGET, size=80)
    assert sizer.observe(BUDGET * 0.5, 80) is False
    assert sizer.observe(BUDGET, 80) is False
    assert sizer.size == 80


def test_a_short_batch_does_not_grow_the_size() -> None:
    """A fast insert of fewer documents than the size says nothing about a full one
    (the stream ran dry), so the size does not creep up to ``high`` while idle."""
    sizer = BatchSizer(low=10, high=500, budget_s=BUDGET, size=80)
    assert sizer.observe(0.001, 79) is False
    assert sizer.size == 80
    assert sizer.observe(0.001, 80) is True
    assert sizer.size == 100


def test_a_slow_short_batch_still_shrinks_the_size() -> None:
    """Over budget is over budget, whatever the batch held: the writer is busy."""
    sizer = BatchSizer(low=10, high=500, budget_s=BUDGET, size=80)
    assert sizer.observe(BUDGET * 4, 5) is True
    assert sizer.size == 40


def test_converges_to_the_size_the_database_inserts_within_the_budget() -> None:
    """Against a writer that takes 0.5 ms per document (~2,000 docs/s), the size settles
    between budget/2 and budget worth of documents and stays there."""
    sizer = BatchSizer(low=10, high=500, budget_s=BUDGET)
    seen = []
    for _ in range(200):
        n = sizer.size
        sizer.observe(n * 0.0005, n)
        seen.append(sizer.size)
    tail = seen[-50:]
    assert all(BUDGET / 2 / 0.0005 <= n <= BUDGET / 0.0005 for n in tail), tail  # 25..50


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 10), (11, 10)],
)
def test_rejects_bounds_that_cannot_hold(low: int, high: int) -> None:
    """low must be at least 1 and at most high."""
    with pytest.raises(ValueError, match="low <= high"):
        BatchSizer(low=low, high=high, budget_s=BUDGET)


def test_consumer_options_reject_meaningless_throttles() -> None:
    """Zero slots, a non-positive budget or a floor above the batch fail at construction."""
    with pytest.raises(ValueError, match="max_inflight_inserts"):
        ConsumerOptions("bulk", "g", "c", batch=100, max_inflight_inserts=0)
    with pytest.raises(ValueError, match="insert_budget_ms"):
        ConsumerOptions("bulk", "g", "c", batch=100, insert_budget_ms=0)
    with pytest.raises(ValueError, match="min_batch"):
        ConsumerOptions("bulk", "g", "c", batch=100, min_batch=101)
    ConsumerOptions("bulk", "g", "c", batch=100, max_inflight_inserts=1, insert_budget_ms=5)
