"""`make run` (python -m chat.localstack) on embedded defaults, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from chat.localstack import free_port
from tests.conftest import UNIT

SETTINGS_ENV = ("REDIS_URL", "MONGO_URL", "SQL_URL", "S3_ENDPOINT_URL", "JWT_SECRET")


def _call(base: str, method: str, path: str, body: Any = None, token: str = "") -> Any:
    req = urllib.request.Request(base + path, method=method)  # noqa: S310 - loopback
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(req, data, timeout=10 * UNIT) as resp:  # noqa: S310
        return json.loads(resp.read() or b"null")


class MakeRun:
    """One `python -m chat.localstack` process, started and stopped like a person would."""

    def __init__(self, local_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
        env.update(GATEWAY_PORT=str(port), LOG_LEVEL="WARNING")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chat.localstack", "--local-dir", str(local_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def url(self) -> str:
        """Read stdout until the web client URL is printed."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 90 * UNIT
        for line in self.proc.stdout:
            found = re.search(r"Web client: (http://\S+)/", line)
            if found:
                return found.group(1)
            if time.monotonic() > deadline:
                break
        pytest.fail(f"no web client URL printed (exit {self.proc.poll()})")

    def interrupt(self) -> list[psutil.Process]:
        """Ctrl-C; returns the children it had, for the caller to check they are gone."""
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(60 * UNIT) == 0
        return children


def _wait_for_message(base: str, token: str, chat_id: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30 * UNIT
    while time.monotonic() < deadline:
        body = _call(base, "GET", f"/api/v1/chats/{chat_id}/messages", token=token)
        if body["messages"]:
            return list(body["messages"])
        time.sleep(0.2)
    pytest.fail("the message was never persisted")


@pytest.mark.slow
def test_make_run_serves_the_client_stops_everything_and_keeps_data(tmp_path: Path) -> None:
    """make run prints the URL, serves the web client and the API end to end, stops every
    process on Ctrl-C, and a second run finds the first run's accounts and messages."""
    local = tmp_path / ".local"
    port = free_port()
    first = MakeRun(local, port)
    try:
        base = first.url()
        assert base == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=10 * UNIT) as page:  # noqa: S310
            assert "text/html" in page.headers["Content-Type"]
        creds = {"email": "ada@example.test", "password": "correct horse", "name": "Ada"}
        token = _call(base, "POST", "/api/v1/auth/signup", creds)["token"]
        chat = _call(base, "POST", "/api/v1/chats", {"title": "t", "member_ids": []}, token)
        _call(base, "POST", f"/api/v1/chats/{chat['chat_id']}/messages", {"text": "hi"}, token)
        assert [m["text"] for m in _wait_for_message(base, token, chat["chat_id"])] == ["hi"]
    finally:
        children = first.interrupt()
    assert children, "make run started no child process"
    assert not [c.pid for c in children if c.is_running() and c.status() != "zombie"]

    second = MakeRun(local, port)
    try:
        base = second.url()
        login = {"email": creds["email"], "password": creds["password"]}
        token = _call(base, "POST", "/api/v1/auth/login", login)["token"]
        messages = _call(base, "GET", f"/api/v1/chats/{chat['chat_id']}/messages", token=token)
        assert [(m["seq"], m["text"]) for m in messages["messages"]] == [(1, "hi")]
    finally:
        second.interrupt()
