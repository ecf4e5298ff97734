"""``python -m gateway`` as a process: graceful SIGTERM (reconnect, 1012, every in-flight
send answered, nothing lost) and the ``--check`` / ``--help`` commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chat.localstack import free_port
from tests.conftest import UNIT
from tests.integration.gateway_stack import Api, Stack, Ws, running_stack, send_frame

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway_only(redis_url: str, mongo_url: str, sql_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A gateway without worker/priority: accepted sends stay in the streams to count."""
    with running_stack(redis_url, mongo_url, sql_url, tmp_path, services=("gateway",)) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sigterm_sends_reconnect_closes_1012_and_answers_every_send(
    gateway_only: Stack, http: aiohttp.ClientSession
) -> None:
    """On SIGTERM every client gets `reconnect` then close 1012, every send it made gets
    an ack or an `unavailable` error (never silence), the process exits 0; after a restart
    on the same port the unanswered sends are resent with their client_ids and each
    message is stored exactly once."""
    stack = gateway_only
    api = Api(http, stack.base_url)
    alice = await api.signup("Alice")
    chat_id = await api.create_chat(alice, [])
    ws = await Ws.connect(http, stack.ws_url, alice)
    client_ids = [f"c{i}" for i in range(200)]
    for cid in client_ids:
        await ws.send(send_frame(chat_id, cid, cid))
    proc = stack.local.procs["gateway"]
    proc.send_signal(signal.SIGTERM)
    frames = []
    while True:
        msg = await ws.ws.receive(timeout=20 * UNIT)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
        frames.append(json.loads(msg.data))
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1012
    assert {"type": "reconnect", "after_ms": 1000} in frames
    acked = {f["client_id"]: f for f in frames if f["type"] == "ack"}
    refused = {f["client_id"] for f in frames if f["type"] == "error"}
    assert {f["code"] for f in frames if f["type"] == "error"} <= {"unavailable"}
    assert set(acked) | refused == set(client_ids)
    assert await asyncio.to_thread(proc.wait, 30 * UNIT) == 0

    stack.start_gateway()  # same port, new process
    ws = await Ws.connect(http, stack.ws_url, alice)
    assert ws.hello["chats"] == [{"chat_id": chat_id, "last_seq": len(acked)}]
    for cid in client_ids:
        await ws.send(send_frame(chat_id, cid, cid))
    again = [await ws.expect(lambda f: f["type"] == "ack") for _ in client_ids]
    for ack in again:
        if ack["client_id"] in acked:
            assert ack == acked[ack["client_id"]]  # the original ack, not a new message
    assert sorted(a["seq"] for a in again) == list(range(1, len(client_ids) + 1))
    await ws.close()


def test_check_command_reports_health_and_help_works(gateway_only: Stack, tmp_path: Path) -> None:
    """`python -m gateway --check` exits 0 against a live gateway, 1 against nothing."""
    env = {**os.environ, "GATEWAY_PORT": str(gateway_only.port)}
    run = [sys.executable, "-m", "gateway"]
    assert subprocess.run([*run, "--check"], env=env, timeout=30 * UNIT).returncode == 0
    env["GATEWAY_PORT"] = str(free_port())
    assert subprocess.run([*run, "--check"], env=env, timeout=30 * UNIT).returncode == 1
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=30 * UNIT)
    assert out.returncode == 0
    assert "--check" in out.stdout
