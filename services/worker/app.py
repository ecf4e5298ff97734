"""``python -m worker``: the bulk class of the message pipeline.

Throughput-tuned: large batches (BATCH, default 500) amortise the XREADGROUP, Mongo
``insert_many`` and XACK round trips; a long block (BLOCK_MS, default 1000) keeps idle
partitions cheap. It never hogs the database the priority service also writes to: at
most BULK_MAX_INFLIGHT_INSERTS inserts in flight (default 1) and inserts sized to
BULK_INSERT_BUDGET_MS (default 25 ms). The pipeline itself is :mod:`chat.consumer`,
shared with priority.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chat.entrypoint import run_service

if TYPE_CHECKING:
    from chat.config import Settings
    from chat.pipeline import ConsumerService

SERVICE = "worker"


def build_consumer(settings: Settings) -> ConsumerService:
    """The worker's consumer over the bulk streams (group ``worker``)."""
    # Imported here, not at the top: `--check` (the container health check) imports this
    # module too and must not pay for the drivers.
    from chat.pipeline import ConsumerService, options_for

    return ConsumerService(settings, options_for(settings, "bulk"), service=SERVICE)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_service(SERVICE, build_consumer, argv, description=__doc__))
