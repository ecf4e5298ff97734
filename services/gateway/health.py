"""Operations endpoints: ``/healthz`` (alive), ``/readyz`` (dependencies), ``/metrics``,
and the static pages (web client, API docs, OpenAPI document)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web

from chat import metrics
from gateway import appkeys, openapi, schemas
from gateway.api import json_response

STATIC_DIR = Path(__file__).with_name("static")
#: Per-dependency budget of one readiness probe (ALB health checks time out at 5 s).
READY_CHECK_TIMEOUT_S = 2.0
#: Our pages load only our own files; the client talks to its own origin (HTTP + WS).
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'"
)
OPENAPI_KEY = web.AppKey("openapi_json", bytes)


async def healthz(request: web.Request) -> web.Response:
    return json_response(schemas.Health(status="ok"))


async def _check(probe: Callable[[], Awaitable[object]]) -> str:
    try:
        await asyncio.wait_for(probe(), READY_CHECK_TIMEOUT_S)
    except Exception as e:
        return f"down: {type(e).__name__}"
    return "ok"


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    redis, store, directory = app[appkeys.REDIS], app[appkeys.STORE], app[appkeys.DIRECTORY]
    names = ("redis", "mongo", "sql")
    results = await asyncio.gather(_check(redis.ping), _check(store.ping), _check(directory.ping))
    checks = dict(zip(names, results, strict=True))
    if app[appkeys.LIFECYCLE].stopping:
        checks["gateway"] = "stopping"
    ok = all(v == "ok" for v in checks.values())
    return json_response(schemas.Readiness(status="ok" if ok else "unavailable", checks=checks),
                         200 if ok else 503)  # fmt: skip


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY], content_type="application/json")


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def page(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC_DIR / name)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        return response

    return page


web_client = _page("index.html")
api_docs = _page("docs.html")


def openapi_bytes() -> bytes:
    return msgspec.json.encode(openapi.document())
