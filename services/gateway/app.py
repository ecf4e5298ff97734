"""The gateway process: ``create_app(settings)`` for tests, ``main()`` for ``python -m gateway``.

Resources come up in ``cleanup_ctx`` order and go down in reverse (CONVENTIONS 5):
argon2 pool -> SQL (migrations) -> Redis (enqueuer) -> MongoDB -> attachments ->
delivery (membership listener, connection hub, ZeroMQ subscriber and its heartbeat).

Shutdown on SIGTERM (:func:`serve`): readiness turns 503 and sends are refused; aiohttp
stops listening; :func:`on_shutdown` tells every client to ``reconnect``, drains the
batching enqueuer so every accepted send still gets its ``ack``, closes the sockets with
1012 after their buffers flush, and waits for the sessions, all within
``SHUTDOWN_TIMEOUT_S``; then the cleanup contexts close the rest. One summary line is
logged.
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
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from chat.config import Settings, load_settings
from chat.errors import WS_CLOSE_RESTART, ConfigError
from chat.fanout import GatewayRegistry, Subscriber
from chat.keys import KeySpace
from chat.lifecycle import GC_YOUNG_THRESHOLD, tune_gc, wait_stopped
from chat.logs import configure
from chat.redisconn import connect as redis_connect
from chat.serialization import ReconnectFrame, encode_frame
from chat.storage import mongo
from chat.storage.attachments import S3Attachments, from_settings
from chat.storage.sql import Directory, create_engine, migrate_async
from chat.streams import BatchingEnqueuer, Enqueuer
from gateway import api, appkeys, health, ws
from gateway.auth import OriginPolicy, Passwords, Tokens
from gateway.hub import Hub
from gateway.limits import LiveBudget, SenderGates
from gateway.membership import Membership
from gateway.openapi import OPERATIONS, aiohttp_path
from gateway.send import Sender

log = logging.getLogger(__name__)

#: JSON bodies of the API are small; attachments do not go through this limit.
MAX_BODY_BYTES = 1024 * 1024
#: A background loop that crashed is restarted after this pause.
RESTART_BACKOFF_S = 1.0

HANDLERS: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    "signup": api.signup,
    "login": api.login,
    "bulkSignup": api.bulk_signup,
    "me": api.me,
    "lookupUser": api.lookup_user,
    "createChat": api.create_chat,
    "listChats": api.list_chats,
    "addMembers": api.add_members,
    "listMessages": api.list_messages,
    "sendMessage": api.post_message,
    "createUpload": api.create_upload,
    "getAttachment": api.get_attachment,
    "uploadAttachment": api.upload_attachment,
    "attachmentContent": api.attachment_content,
    "websocket": ws.handle_ws,
    "healthz": health.healthz,
    "readyz": health.readyz,
    "metrics": health.metrics_handler,
    "openapi": health.openapi_json,
    "apiDocs": health.api_docs,
    "webClient": health.web_client,
}


def create_app(settings: Settings) -> web.Application:
    """The gateway application; resources open when it starts (runner/test client)."""
    if settings.fanout_advertise_host == "ecs":
        raise ConfigError("FANOUT_ADVERTISE_HOST=ecs must be resolved by main() first")
    app = web.Application(middlewares=[api.error_middleware], client_max_size=MAX_BODY_BYTES)
    app[appkeys.SETTINGS] = settings
    app[appkeys.LIFECYCLE] = appkeys.Lifecycle()
    app[appkeys.TOKENS] = Tokens(settings.effective_jwt_secret(), settings.jwt_ttl_s)
    app[appkeys.ORIGINS] = OriginPolicy(settings.allowed_origins)
    app[appkeys.SENDER_GATES] = SenderGates(settings.ws_flood_per_s)
    app[health.OPENAPI_KEY] = health.openapi_bytes()
    app.cleanup_ctx.extend(
        [passwords_ctx, sql_ctx, redis_ctx, mongo_ctx, attachments_ctx, delivery_ctx]
    )
    app.on_shutdown.append(on_shutdown)
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    """Exactly the operations of the OpenAPI document, plus the static files."""
    for op in OPERATIONS:
        app.router.add_route(
            op.method, aiohttp_path(op.path), HANDLERS[op.operation_id], name=op.operation_id
        )
    app.router.add_static("/static/", health.STATIC_DIR, name="static", append_version=True)


# --------------------------------------------------------------------------- resources


async def passwords_ctx(app: web.Application) -> AsyncIterator[None]:
    passwords = Passwords()
    app[appkeys.PASSWORDS] = passwords
    yield
    passwords.close()


async def sql_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    url = settings.sql_url.get_secret_value()
    if settings.sql_migrate_on_start:
        await migrate_async(url)
    engine = create_engine(url)
    app[appkeys.DIRECTORY] = Directory(engine)
    yield
    await engine.dispose()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    client = redis_connect(settings)
    keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
    app[appkeys.REDIS] = client
    app[appkeys.KEYSPACE] = keyspace
    app[appkeys.ENQUEUER] = BatchingEnqueuer(
        Enqueuer(
            client,
            keyspace,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            max_len=settings.stream_max_len,
        )
    )
    yield
    await app[appkeys.ENQUEUER].drain()
    await client.aclose()


async def mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    client = mongo.connect(settings.mongo_url.get_secret_value())
    app[appkeys.STORE] = mongo.MessageStore(client, settings.mongo_db)
    yield
    await client.close()


async def attachments_ctx(app: web.Application) -> AsyncIterator[None]:
    store = from_settings(app[appkeys.SETTINGS])
    if isinstance(store, S3Attachments) and app[appkeys.SETTINGS].s3_endpoint_url:
        with contextlib.suppress(Exception):  # local moto: create the bucket if missing
            await store.ensure_bucket()
    app[appkeys.ATTACHMENTS] = store
    yield


async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """Membership cache + listener, the hub, the fan-out subscriber, the send path."""
    settings, lifecycle = app[appkeys.SETTINGS], app[appkeys.LIFECYCLE]
    redis, keyspace = app[appkeys.REDIS], app[appkeys.KEYSPACE]
    membership = Membership(
        app[appkeys.DIRECTORY], redis, keyspace, ttl_s=settings.membership_cache_ttl_s
    )
    subscriber = Subscriber(
        GatewayRegistry(redis, keyspace, settings.fanout_registry_ttl_s),
        bind_host=settings.gateway_host,
        port=settings.fanout_port,
        advertise_host=settings.fanout_advertise_host,
    )
    lifecycle.fanout_endpoint = subscriber.endpoint
    hub = Hub(subscriber)
    membership.on_change(hub.members_changed)
    app[appkeys.MEMBERSHIP] = membership
    app[appkeys.HUB] = hub
    app[appkeys.SENDER] = Sender(
        app[appkeys.ENQUEUER],
        membership,
        LiveBudget(settings.live_rate_per_s, settings.live_burst),
        app[appkeys.ATTACHMENTS],
        max_text_bytes=settings.max_text_bytes,
    )
    stop = lifecycle.stop
    tasks = [
        asyncio.ensure_future(supervise("fanout-subscriber", subscriber.run, stop, hub.deliver)),
        asyncio.ensure_future(supervise("fanout-heartbeat", subscriber.heartbeat, stop)),
        asyncio.ensure_future(supervise("membership-listener", membership.run, stop)),
    ]
    log.info(
        "gateway started",
        extra={"fanout_endpoint": subscriber.endpoint, "port": settings.gateway_port},
    )
    try:
        yield
    finally:
        stop.set()
        await app[appkeys.ENQUEUER].drain()
        _, pending = await asyncio.wait(tasks, timeout=3.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        subscriber.close()


async def supervise(name: str, run: Callable[..., Awaitable[None]], stop: asyncio.Event,
                    *args: Any) -> None:  # fmt: skip
    """Run ``run(stop, *args)`` until ``stop``; restart it if it crashes."""
    while not stop.is_set():
        try:
            await run(stop, *args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop crashed; restarting", extra={"loop": name})
            await wait_stopped(stop, RESTART_BACKOFF_S)


# --------------------------------------------------------------------------- shutdown


async def on_shutdown(app: web.Application) -> None:
    """reconnect -> drain the enqueuer (acks go out) -> close 1012 -> wait for sessions."""
    settings, lifecycle, hub = app[appkeys.SETTINGS], app[appkeys.LIFECYCLE], app[appkeys.HUB]
    lifecycle.stopping = True
    started = time.monotonic()
    deadline = started + settings.shutdown_timeout_s * 0.8
    connections = len(hub)
    hub.broadcast(encode_frame(ReconnectFrame(after_ms=settings.reconnect_after_ms)))
    drained = True
    try:
        await asyncio.wait_for(app[appkeys.ENQUEUER].drain(), max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        drained = False
    await asyncio.sleep(0)  # let the ack callbacks of the last batch run
    hub.close_all(WS_CLOSE_RESTART, "server restart: reconnect")
    await hub.wait_empty(max(0.1, deadline - time.monotonic()))
    log.info(
        "gateway drained",
        extra={
            "connections": connections,
            "still_open": len(hub),
            "enqueuer_drained": drained,
            "seconds": round(time.monotonic() - started, 3),
        },
    )


# --------------------------------------------------------------------------- process


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_timeout_s * 0.2,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.gateway_host, settings.gateway_port, reuse_address=True, backlog=2048
        )
        await site.start()
        # Everything allocated at startup lives for the whole process: keep it out of the
        # cyclic collector's passes, and collect the in-flight frames less often.
        tune_gc(GC_YOUNG_THRESHOLD)
        log.info("gateway listening", extra={"url": site.name})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway stopping")
        app[appkeys.LIFECYCLE].stopping = True
    finally:
        # Also after a failed bind: the ZeroMQ socket must close or the process hangs
        # at exit waiting for it.
        await runner.cleanup()
    log.info("gateway stopped")


def resolve_advertise_host(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """FANOUT_ADVERTISE_HOST=ecs: the task's IP from the ECS container metadata (v4)."""
    if settings.fanout_advertise_host != "ecs":
        return settings
    uri = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        raise ConfigError("FANOUT_ADVERTISE_HOST=ecs but ECS_CONTAINER_METADATA_URI_V4 is unset")
    with urllib.request.urlopen(uri, timeout=5) as resp:  # noqa: S310 - link-local ECS agent
        meta = json.load(resp)
    for network in meta.get("Networks", ()):
        for address in network.get("IPv4Addresses", ()):
            return settings.with_overrides(fanout_advertise_host=address)
    raise ConfigError("ECS container metadata lists no IPv4 address")


def check(settings: Settings) -> int:
    """``--check``: GET /healthz on the local port; 0 when it answers 200."""
    url = f"http://127.0.0.1:{settings.gateway_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Chat gateway: WebSocket protocol v1, HTTP API v1, web client. "
        "Configured by environment variables (docs/configuration.md).",
    )
    parser.add_argument(
        "--check", action="store_true", help="health check: exit 0 if /healthz answers"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.check:
            return check(settings)
        settings = resolve_advertise_host(settings, os.environ)
    except ConfigError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    configure(settings, "gateway")
    if not settings.jwt_secret.get_secret_value():
        log.warning("JWT_SECRET is unset: using a random per-process secret (dev only)")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
