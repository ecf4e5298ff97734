"""The heartbeat file: written atomically, off the event loop, read by --check."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from chat.heartbeat import Heartbeat, check, heartbeat_path


def beat(tmp_path: Path) -> Heartbeat:
    return Heartbeat(
        heartbeat_path(tmp_path, "worker"),
        "worker",
        healthy=lambda: True,
        counters=lambda: {"processed": 7},
        health_port=8081,
    )


async def test_the_running_heartbeat_writes_its_file_off_the_event_loop(
    tmp_path: Path,
) -> None:
    """The payload is built on the loop, the blocking open/rename runs in another
    thread: a slow disk can never hold the loop (and the messages in hand) still."""
    heartbeat = beat(tmp_path)
    loop_thread = threading.get_ident()
    writers: list[int] = []
    store = heartbeat.store
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def recording_store(payload: str) -> None:
        writers.append(threading.get_ident())
        store(payload)
        loop.call_soon_threadsafe(stop.set)  # one beat is enough

    heartbeat.store = recording_store  # type: ignore[method-assign]
    await asyncio.wait_for(heartbeat.run(stop), 10)
    assert len(writers) == 1  # stopped during the first write: no second one
    assert loop_thread not in writers
    data = json.loads(heartbeat.path.read_text())
    assert data["state"] == "running"
    assert data["counters"] == {"processed": 7}
    assert check(tmp_path, "worker")[0]


def test_the_last_beat_says_stopped_and_fails_the_check(tmp_path: Path) -> None:
    """After shutdown the file says ``stopped`` (unhealthy): --check exits 1."""
    heartbeat = beat(tmp_path)
    heartbeat.write("stopped")
    data = json.loads(heartbeat.path.read_text())
    assert data["state"] == "stopped"
    assert data["healthy"] is False
    assert not check(tmp_path, "worker")[0]
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed away
