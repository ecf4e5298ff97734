"""Lifecycle primitives shared by every long-running part (``run(stop)`` loops)."""

from __future__ import annotations

import asyncio
import contextlib
import gc


async def wait_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stop`` is set.

    Returns whether ``stop`` is set, so loops read ``while not await wait_stopped(...)``.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


#: Net allocations of tracked objects between young-generation collections in the
#: gateway (CPython's default is 700). A gateway keeps thousands of objects in flight
#: (frames, batches, callbacks); at 700 a burst triggers a collection every few hundred
#: messages, which promotes the in-flight objects and rescans them in the older
#: generations: ~20 % of the gateway's CPU under the ingest benchmark, ~2 % at 10,000
#: (docs/benchmarks.md). The worker measured no better with it (30-34k msg/s per core
#: either way, within noise), so it keeps the default.
GC_YOUNG_THRESHOLD = 10_000
#: Young collections per older one (defaults 10, 10), with GC_YOUNG_THRESHOLD.
GC_OLDER_THRESHOLD = 20


def tune_gc(young_threshold: int | None = None) -> None:
    """Call once the process is built, before it serves: everything allocated so far
    (modules, settings, pools) lives as long as the process and is moved out of the
    collector's reach (``gc.freeze``), so full collections do not rescan it. With
    ``young_threshold``, collections run that many net allocations apart (and
    GC_OLDER_THRESHOLD young collections per older one)."""
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
