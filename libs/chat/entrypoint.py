"""``main()`` of the consumer services: argparse, settings once, ``--check`` or run.

Kept free of heavy imports (aiohttp, drivers) so that ``python -m worker --check``, the
container health check run every few seconds, starts fast: it only reads the heartbeat
file. Serving imports :mod:`chat.service` and the service's factory only when needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from chat.heartbeat import check

if TYPE_CHECKING:
    from chat.config import Settings
    from chat.service import Host


def run_service(
    name: str,
    build: Callable[[Settings], Host],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
) -> int:
    """Parse the command line and run the service (or the health check); the exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if the running service's heartbeat is fresh and healthy",
    )
    args = parser.parse_args(argv)
    if args.check:
        # LOCAL_DIR only: the check must not fail on an unrelated bad setting, and
        # pydantic is a second of import on a busy task.
        ok, reason = check(os.environ.get("LOCAL_DIR") or ".local", name)
        print(f"{name}: {'healthy' if ok else 'unhealthy'}: {reason}")
        return 0 if ok else 1
    from chat.config import load_settings
    from chat.errors import ConfigError

    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    from chat.service import run

    return run(name, build, settings)
