"""The runner of the long-running consumer services (worker, priority).

:func:`chat.entrypoint.run_service` parses the command line (``--help``, ``--check``)
and reads the settings; :func:`run` is the rest of a service's life:

* logging configured; SIGTERM/SIGINT set one stop event (a second signal cancels at once);
* the health app serves ``/healthz`` (process alive), ``/readyz`` (every dependency probe
  passes and the service is not stuck; 503 while draining) and ``/metrics`` on
  ``HEALTH_HOST:HEALTH_PORT``;
* a heartbeat file with counters (:mod:`chat.heartbeat`) is rewritten every few seconds
  under ``LOCAL_DIR``: ``--check`` reads it;
* the service's supervised parts and the heartbeat run in one task group.

Shutdown order (CONVENTIONS 7): stop taking work (readiness turns 503 as soon as the stop
event is set), let each part finish what it holds up to ``SHUTDOWN_TIMEOUT_S`` (keep it
below ECS ``stopTimeout``), cancel what is left, close pools, write a last heartbeat
(``stopped``) and exit 0. A part that crashes cancels the others and the process exits 1
so that its supervisor restarts it: work it held is still pending in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from chat import logs, metrics
from chat.config import Settings
from chat.heartbeat import Heartbeat, heartbeat_path
from chat.lifecycle import tune_gc

log = logging.getLogger(__name__)

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
        heartbeat = Heartbeat(
            heartbeat_path(settings.local_dir, name),
            name,
            healthy=host.healthy,
            counters=host.counters,
            health_port=port,
        )
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
    # Everything imported and built so far lives as long as the process: out of the
    # collector's reach, so full collections do not rescan ~10^5 module objects each
    # time (~10% of a worker's CPU).
    tune_gc()
    try:
        return await serve(name, host, settings, stop)
    except asyncio.CancelledError:
        return 1


def run(name: str, build: Callable[[Settings], Host], settings: Settings) -> int:
    """Configure logging and serve the service built by ``build`` until a signal."""
    logs.configure(settings, name)
    coro = _amain(name, build, settings)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)
    return int(uvloop.run(coro))


def counters_of(stats: Any) -> dict[str, int]:
    """A dataclass of int counters as a dict (heartbeat payload)."""
    return {k: int(getattr(stats, k)) for k in stats.__slots__}
