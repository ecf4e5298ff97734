"""Health as data: the heartbeat file a consumer service writes, and the ``--check``
verdict read from it (CONVENTIONS 14).

The file (``LOCAL_DIR/<service>.heartbeat.json``) is rewritten atomically every
``HEARTBEAT_INTERVAL_S`` with the process's state and counters. The payload is built
on the event loop (the counters belong to it) and the file is written in a thread: an
``open`` or ``rename`` can block for hundreds of milliseconds on a busy disk (measured:
350 ms in the worker and the priority at once, while SecantusDB journalled on the same
disk), and on the loop that would hold every live message in hand for as long.

``python -m <service> --check`` (the container health check) reads it and needs no
database and no heavy import: this module imports only the standard library, so the
check costs a fraction of a second even on a busy 2-core task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: How often the heartbeat file is rewritten.
HEARTBEAT_INTERVAL_S = 2.0
#: A heartbeat older than this fails ``--check``: several missed writes, so one slow disk
#: write or GC pause never restarts a healthy task.
HEARTBEAT_STALE_S = 15.0


def heartbeat_path(local_dir: str | Path, name: str) -> Path:
    return Path(local_dir) / f"{name}.heartbeat.json"


class Heartbeat:
    """Writes ``{service, pid, time, state, healthy, health_port, counters}`` atomically."""

    def __init__(
        self,
        path: Path,
        name: str,
        *,
        healthy: Callable[[], bool],
        counters: Callable[[], Mapping[str, int]],
        health_port: int,
    ) -> None:
        self.path = path
        self._name = name
        self._healthy = healthy
        self._counters = counters
        self._port = health_port

    def payload(self, state: str) -> str:
        """The file's content now (call on the event loop: it reads the counters)."""
        return json.dumps(
            {
                "service": self._name,
                "pid": os.getpid(),
                "time": time.time(),
                "state": state,
                "healthy": state != "stopped" and self._healthy(),
                "health_port": self._port,
                "counters": dict(self._counters()),
            }
        )

    def store(self, payload: str) -> None:
        """Replace the file with ``payload`` (blocking file I/O: not on the loop)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(payload)
        tmp.replace(self.path)  # atomic: --check never reads half a file

    def write(self, state: str) -> None:
        """Write now, blocking (the last ``stopped`` beat, once the loop's work is done)."""
        self.store(self.payload(state))

    async def run(self, stop: asyncio.Event) -> None:
        """Rewrite every HEARTBEAT_INTERVAL_S ("running", then "draining") until stop;
        each write runs in a thread."""
        while True:
            try:
                payload = self.payload("draining" if stop.is_set() else "running")
                await asyncio.to_thread(self.store, payload)
            except OSError:
                log.warning("heartbeat write failed", extra={"path": str(self.path)})
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL_S)
            except TimeoutError:
                continue


def check(local_dir: str | Path, name: str, *, now: float | None = None) -> tuple[bool, str]:
    """The ``--check`` verdict from the heartbeat file, with a reason."""
    path = heartbeat_path(local_dir, name)
    try:
        data = json.loads(path.read_text())
        age = (time.time() if now is None else now) - float(data["time"])
        state, healthy = str(data["state"]), bool(data["healthy"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"no readable heartbeat at {path}: {type(e).__name__}"
    if age > HEARTBEAT_STALE_S:
        return False, f"heartbeat is {age:.1f}s old (limit {HEARTBEAT_STALE_S}s)"
    if state == "stopped":
        return False, "service stopped"
    if not healthy:
        return False, "service reports it is stuck"
    return True, f"{state}, heartbeat {age:.1f}s old"
