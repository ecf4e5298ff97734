"""Process start-up tuning shared by the services."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from chat.lifecycle import GC_OLDER_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_the_startup_heap_and_sets_the_gateway_thresholds() -> None:
    """What exists at start-up leaves the collector's generations (frozen); the
    thresholds change only when asked (the gateway), not for the consumers."""
    before = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    tune_gc(12_345)
    assert gc.get_threshold() == (12_345, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
