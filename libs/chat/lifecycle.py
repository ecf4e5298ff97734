"""Lifecycle primitives shared by every long-running part (``run(stop)`` loops)."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stop`` is set.

    Returns whether ``stop`` is set, so loops read ``while not await wait_stopped(...)``.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
