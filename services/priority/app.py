"""``python -m priority``: the live class of the message pipeline.

Latency-tuned: small batches (LIVE_BATCH, default 50) so a live message never waits
behind hundreds of others in one insert, a short block (LIVE_BLOCK_MS, default 150) and
a short visibility timeout (LIVE_CLAIM_IDLE_MS, default 5 s) so a crashed priority
process delays live messages by seconds, not half a minute. Its own group
(``priority``) on its own streams (``chat:{p}:live``): the bulk backlog is never in its
way. The pipeline itself is :mod:`chat.consumer`, shared with the worker.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chat.entrypoint import run_service

if TYPE_CHECKING:
    from chat.config import Settings
    from chat.pipeline import ConsumerService

SERVICE = "priority"


def build_consumer(settings: Settings) -> ConsumerService:
    """The priority consumer over the live streams (group ``priority``)."""
    # Imported here, not at the top: `--check` (the container health check) imports this
    # module too and must not pay for the drivers.
    from chat.pipeline import ConsumerService, options_for

    return ConsumerService(settings, options_for(settings, "live"), service=SERVICE)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_service(SERVICE, build_consumer, argv, description=__doc__))
