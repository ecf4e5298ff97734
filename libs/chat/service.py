"""The runner every long-running consumer service (worker, priority) starts through.

``run_service(name, build, argv)`` is the whole ``main()`` of a service:

* argparse (``--help``), settings read once (a bad one exits 2 naming the variable),
  logging configured;
* ``--check``: the container health check. Reads the heartbeat file and exits 0 if it is
  fresh and says healthy, else 1. It needs no database: it judges the process by the
  data the process wrote (CONVENTIONS 14);
* otherwise: SIGTERM/SIGINT set one stop event (a second signal cancels at once), the
  health app serves ``/healthz`` (process alive), ``/readyz`` (every dependency probe
  passes and the service is not stuck; 503 while draining) and ``/metrics`` on
  ``HEALTH_HOST:HEALTH_PORT``, a heartbeat file with counters is rewritten every
  ``HEARTBEAT_INTERVAL_S`` under ``LOCAL_DIR``, and the service's supervised parts run in
  one task group.

Shutdown order (CONVENTIONS 7): stop taking work (readiness turns 503 as soon as the stop
event is set), let each part finish what it holds up to ``SHUTDOWN_TIMEOUT_S`` (keep it
below ECS ``stopTimeout``), cancel what is left, close pools, write a last heartbeat
(``stopped``) and exit 0. A part that crashes cancels the others and the process exits 1
so that its supervisor restarts it: work it held is still pending in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from chat import logs, metrics
from chat.config import Settings, load_settings
from chat.errors import ConfigError
from chat.lifecycle import wait_stopped

log = logging.getLogger(__name__)

#: How often the heartbeat file is rewritten.
HEARTBEAT_INTERVAL_S = 2.0
#: A heartbeat older than this fails ``--check``: several missed writes, so one slow disk
#: write or GC pause never restarts a healthy task.
HEARTBEAT_STALE_S = 15.0
#: Each readiness probe gets this long; a slower dependency counts as unreachable.
PROBE_TIMEOUT_S = 2.0


class Part(Protocol):
    """A supervised long-running part: runs until ``stop``, then releases what it holds."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Supervised:
    """Adapts a ``run(stop)`` coroutine and a close function into a :class:`Part`."""

    name: str
    runner: Callable[[asyncio.Event], Awaitable[None]]
    closer: Callable[[], Awaitable[None] | None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.runner(stop)

    async def close(self) -> None:
        if self.closer is not None:
            result = self.closer()
            if result is not None:
                await result


class Host(Protocol):
    """What a service gives the runner."""

    def parts(self) -> Sequence[Part]: ...

    def probes(self) -> Mapping[str, Callable[[], Awaitable[None]]]:
        """Readiness probes by name; each raises (or times out) when not ready."""
        ...

    def healthy(self) -> bool:
        """Liveness beyond "the loop runs": false when the service is stuck."""
        ...

    def counters(self) -> Mapping[str, int]: ...

    async def close(self) -> None: ...


HOST_KEY = web.AppKey("host", Host)
STOP_KEY = web.AppKey("stop", asyncio.Event)
NAME_KEY = web.AppKey("name", str)


# --------------------------------------------------------------------------- health app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "service": request.app[NAME_KEY]})


async def _probe(check: Callable[[], Awaitable[None]]) -> str | None:
    try:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_S)
    except Exception as e:  # any failure of a probe means "not ready", reported by name
        return f"{type(e).__name__}: {e}"[:300]
    return None


async def readiness(host: Host, stop: asyncio.Event) -> tuple[bool, dict[str, str]]:
    """(ready, per-check status); not ready while draining or when a probe fails."""
    probes = host.probes()
    results = await asyncio.gather(*(_probe(c) for c in probes.values()))
    checks = {name: problem or "ok" for name, problem in zip(probes, results, strict=True)}
    if not host.healthy():
        checks["progress"] = "stuck"
    if stop.is_set():
        checks["state"] = "draining"
    return all(v == "ok" for v in checks.values()), checks


async def _readyz(request: web.Request) -> web.Response:
    ready, checks = await readiness(request.app[HOST_KEY], request.app[STOP_KEY])
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_health_app(name: str, host: Host, stop: asyncio.Event) -> web.Application:
    """The /healthz, /readyz and /metrics app of a consumer service."""
    app = web.Application()
    app[NAME_KEY] = name
    app[HOST_KEY] = host
    app[STOP_KEY] = stop
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# --------------------------------------------------------------------------- heartbeat


def heartbeat_path(settings: Settings, name: str) -> Path:
    return Path(settings.local_dir) / f"{name}.heartbeat.json"


class Heartbeat:
    """Writes ``{time, pid, state, healthy, health_port, counters}`` atomically."""

    def __init__(self, path: Path, name: str, host: Host, health_port: int) -> None:
        self.path = path
        self._name = name
        self._host = host
        self._port = health_port

    def write(self, state: str) -> None:
        data = {
            "service": self._name,
            "pid": os.getpid(),
            "time": time.time(),
            "state": state,
            "healthy": state != "stopped" and self._host.healthy(),
            "health_port": self._port,
            "counters": dict(self._host.counters()),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)  # atomic: --check never reads half a file

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            try:
                self.write("draining" if stop.is_set() else "running")
            except OSError:
                log.warning("heartbeat write failed", extra={"path": str(self.path)})
            if await wait_stopped(stop, HEARTBEAT_INTERVAL_S):
                return


def check(settings: Settings, name: str, *, now: float | None = None) -> tuple[bool, str]:
    """The ``--check`` verdict from the heartbeat file, with a reason."""
    path = heartbeat_path(settings, name)
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


# --------------------------------------------------------------------------- supervision


async def _drain_deadline(
    stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]], limit_s: float
) -> None:
    """After ``stop``, give the parts ``limit_s`` seconds, then cancel what is left."""
    await stop.wait()
    started = time.monotonic()
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    log.info(
        "drained",
        extra={
            "seconds": round(time.monotonic() - started, 3),
            "cancelled_parts": sorted(t.get_name() for t in pending),
        },
    )


async def supervise(
    parts: Sequence[Part], stop: asyncio.Event, *, drain_timeout: float, extra: Sequence[Part] = ()
) -> None:
    """Run every part in one task group. A part returning early also stops the others
    (gracefully); a part raising cancels them and the error propagates."""

    async def guarded(part: Part) -> None:
        try:
            await part.run(stop)
        finally:
            stop.set()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(guarded(p), name=p.name) for p in parts]
        for p in extra:
            tg.create_task(p.run(stop), name=p.name)
        tg.create_task(_drain_deadline(stop, tasks, drain_timeout), name="drain-deadline")


async def serve(name: str, host: Host, settings: Settings, stop: asyncio.Event) -> int:
    """Health app + heartbeat + the host's parts until ``stop``; returns the exit code."""
    parts = list(host.parts())
    runner = web.AppRunner(create_health_app(name, host, stop), access_log=None)
    await runner.setup()
    code = 1
    heartbeat: Heartbeat | None = None
    try:
        site = web.TCPSite(runner, settings.health_host, settings.health_port)
        await site.start()
        port = _bound_port(runner)
        heartbeat = Heartbeat(heartbeat_path(settings, name), name, host, port)
        log.info("service started", extra={"health_port": port, "pid": os.getpid()})
        beat = Supervised("heartbeat", heartbeat.run)
        await supervise(parts, stop, drain_timeout=settings.shutdown_timeout_s, extra=[beat])
        code = 0
    except Exception:
        log.exception("service failed")
    finally:
        for part in reversed(parts):
            with contextlib.suppress(Exception):
                await part.close()
        await host.close()
        await runner.cleanup()
        if heartbeat is not None:
            with contextlib.suppress(OSError):
                heartbeat.write("stopped")
        log.info("service stopped", extra={"exit_code": code, "counters": dict(host.counters())})
    return code


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("health app is not listening")


# --------------------------------------------------------------------------- main


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: cancelling", extra={"signal": signum})
            if main_task is not None:
                main_task.cancel()
            return
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def _amain(name: str, build: Callable[[Settings], Host], settings: Settings) -> int:
    stop = asyncio.Event()
    _install_signals(stop)
    host = build(settings)
    try:
        return await serve(name, host, settings, stop)
    except asyncio.CancelledError:
        return 1


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type,no-any-return]


def run_service(
    name: str,
    build: Callable[[Settings], Host],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
) -> int:
    """The ``main()`` of a consumer service; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=description)
    parser.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if the running service's heartbeat is fresh and healthy",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    if args.check:
        ok, reason = check(settings, name)
        print(f"{name}: {'healthy' if ok else 'unhealthy'}: {reason}")
        return 0 if ok else 1
    logs.configure(settings, name)
    return _run(_amain(name, build, settings))


def counters_of(stats: Any) -> dict[str, int]:
    """A dataclass of int counters as a dict (heartbeat payload)."""
    return {k: int(getattr(stats, k)) for k in stats.__slots__}
