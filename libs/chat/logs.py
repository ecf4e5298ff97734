"""Logging: structlog rendering JSON lines (or console), stdlib loggers routed through it.

Modules use ``logging.getLogger(__name__)`` with ``extra={...}`` for structured fields,
or ``structlog.get_logger(__name__)``; both come out in the same format. Log lifecycle
(connections, consumers, sweeps), not messages: per-message lines are DEBUG only.
Never log a Settings secret: they are SecretStr and print as '**********'.
"""

from __future__ import annotations

import logging
import sys

import structlog

from chat.config import Settings


def configure(settings: Settings, service: str) -> None:
    """Set up logging once per process."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("aiohttp.access", "botocore", "boto3", "urllib3", "pymongo"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=service)
