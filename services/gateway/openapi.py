"""The OpenAPI 3.1 document served at ``/api/openapi.json``.

:data:`OPERATIONS` is the route table of the gateway: :func:`gateway.app.setup_routes`
registers exactly these (method, path, operation id) triples, and the document is built
from the same table with the JSON Schemas msgspec generates from the structs the handlers
decode and encode (:mod:`gateway.schemas`). A test compares the served document with the
application's router, and schemathesis checks live responses against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from chat.serialization import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT
from gateway import schemas

API_VERSION = "1.0.0"
_REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI template; aiohttp patterns come from PATH_PATTERNS
    operation_id: str
    summary: str
    tag: str
    responses: dict[int, Any]  # status -> struct type, None (no body) or a media dict
    request: type | None = None
    auth: bool = True
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


CHAT_ID = Param("chat_id", "path", {"type": "integer", "minimum": 1}, "Chat id.", required=True)
KEY = Param(
    "key",
    "path",
    {"type": "string", "pattern": "^[0-9]+/[0-9a-f-]{36}$"},
    "Attachment key `<user_id>/<uuid>`, as returned by POST /api/v1/attachments.",
    required=True,
)
SEQ = {"type": "integer", "minimum": 0, "maximum": 2**53}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
HTML = {"text/html": {"schema": {"type": "string"}}}

#: aiohttp route patterns for templates whose parameters need one.
PATH_PATTERNS = {
    "{chat_id}": r"{chat_id:\d+}",
    "{key}": r"{key:\d+/[0-9a-f-]{36}}",
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/api/v1/auth/signup", "signup", "Create an account", "auth",
        {201: schemas.TokenResponse}, schemas.SignupRequest, auth=False, errors=(400, 409, 413),
        description="`kind` is `human` (default), `bot` or `loadtest`; non-human accounts "
        "always send bulk.",
    ),
    Operation(
        "POST", "/api/v1/auth/login", "login", "Log in", "auth",
        {200: schemas.TokenResponse}, schemas.LoginRequest, auth=False, errors=(400, 401, 413),
    ),
    Operation(
        "POST", "/api/v1/auth/bulk-signup", "bulkSignup",
        "Provision many load-test or bot accounts sharing one password", "auth",
        {201: schemas.BulkSignupResponse}, schemas.BulkSignupRequest, auth=False,
        errors=(400, 404, 409, 413),
        description="Addition to the contract for the load tester: one password hash for "
        "the whole batch. All or nothing: 409 if any e-mail exists. Capped by "
        "BULK_SIGNUP_MAX (0 disables the route: 404).",
    ),
    Operation("GET", "/api/v1/me", "me", "The caller, from the token", "auth",
              {200: schemas.Me}, errors=(401,)),
    Operation(
        "GET", "/api/v1/users", "lookupUser", "Find a user by e-mail", "auth",
        {200: schemas.UserSummary}, errors=(400, 401, 404),
        params=(Param("email", "query", {"type": "string", "minLength": 1}, "E-mail.", True),),
    ),
    Operation(
        "POST", "/api/v1/chats", "createChat", "Create a chat (the creator is a member)",
        "chats", {201: schemas.ChatCreated}, schemas.CreateChatRequest, errors=(400, 401, 409, 413),
    ),
    Operation(
        "GET", "/api/v1/chats", "listChats", "The caller's chats with their last_seq",
        "chats", {200: schemas.ChatList}, errors=(401, 503),
    ),
    Operation(
        "POST", "/api/v1/chats/{chat_id}/members", "addMembers", "Add members to a chat",
        "chats", {200: schemas.Members}, schemas.AddMembersRequest, params=(CHAT_ID,),
        errors=(400, 401, 403, 404, 409, 413),
        description="Addition to the contract. Only members may add members; every gateway "
        "drops its cached member list and connected new members start receiving the chat.",
    ),
    Operation(
        "GET", "/api/v1/chats/{chat_id}/messages", "listMessages",
        "Persisted messages in seq order", "messages", {200: schemas.MessageList},
        params=(
            CHAT_ID,
            Param("after_seq", "query", SEQ, "Messages with seq > after_seq, ascending."),
            Param("before_seq", "query", SEQ, "Messages with seq < before_seq (latest if "
                  "neither bound is given)."),
            Param("limit", "query",
                  {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX_LIMIT,
                   "default": HISTORY_DEFAULT_LIMIT}, "Page size."),
        ),
        errors=(400, 401, 403, 404, 503),
    ),
    Operation(
        "POST", "/api/v1/chats/{chat_id}/messages", "sendMessage",
        "Send a message (202 once it is durable in the queue)", "messages",
        {202: schemas.SendAccepted}, schemas.SendRequest, params=(CHAT_ID,),
        errors=(400, 401, 403, 404, 413, 429, 503),
        description="A resend with the same `client_id` within 10 minutes returns the "
        "original result and stores nothing new.",
    ),
    Operation(
        "POST", "/api/v1/attachments", "createUpload", "Get an upload slot", "attachments",
        {201: schemas.UploadSlot}, schemas.UploadRequest, errors=(400, 401, 413),
        description="PUT the bytes to `upload_url` (an S3 presigned URL, or the gateway's "
        "own signed upload route when run locally), then send the message with `key`.",
    ),
    Operation(
        "GET", "/api/v1/attachments/{key}", "getAttachment", "Download an attachment",
        "attachments", {302: None}, params=(KEY,), errors=(400, 401, 404),
        description="Redirects to a presigned GET. Browsers may pass the token as `?token=`.",
    ),
    Operation(
        "PUT", "/api/v1/attachments/{key}/upload", "uploadAttachment",
        "Upload bytes to a local slot (local runs only)", "attachments", {204: None},
        auth=False,
        params=(
            KEY,
            Param("content_type", "query", {"type": "string"}, "As requested.", True),
            Param("size", "query", {"type": "integer", "minimum": 1}, "As requested.", True),
            Param("sig", "query", {"type": "string"}, "Signature from upload_url.", True),
        ),
        errors=(400, 403, 404, 413),
        extra={"requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    ),
    Operation(
        "GET", "/api/v1/attachments/{key}/content", "attachmentContent",
        "Attachment bytes (local runs only)", "attachments",
        {200: {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        auth=False, params=(KEY,), errors=(400, 404),
    ),
    Operation(
        "GET", "/ws", "websocket", "WebSocket protocol v1", "realtime",
        {101: None}, params=(
            Param("token", "query", {"type": "string"}, "JWT (or Authorization header)."),
        ),
        auth=False, errors=(400, 401, 403, 503),
        description="Upgrade to a WebSocket speaking protocol v1 (see docs/api.md).",
    ),
    Operation("GET", "/healthz", "healthz", "Process alive", "operations",
              {200: schemas.Health}, auth=False),
    Operation("GET", "/readyz", "readyz", "Redis, MongoDB and SQL reachable", "operations",
              {200: schemas.Readiness, 503: schemas.Readiness}, auth=False),
    Operation("GET", "/metrics", "metrics", "Prometheus metrics", "operations",
              {200: TEXT}, auth=False),
    Operation("GET", "/api/openapi.json", "openapi", "This document", "operations",
              {200: {"application/json": {"schema": {"type": "object"}}}}, auth=False),
    Operation("GET", "/api/docs", "apiDocs", "Interactive API page (Swagger UI)",
              "operations", {200: HTML}, auth=False),
    Operation("GET", "/", "webClient", "The web client", "operations", {200: HTML},
              auth=False),
)  # fmt: skip


def aiohttp_path(template: str) -> str:
    for name, pattern in PATH_PATTERNS.items():
        template = template.replace(name, pattern)
    return template


def _schema_types() -> list[type]:
    found: list[type] = [schemas.ErrorBody]
    for op in OPERATIONS:
        if op.request is not None:
            found.append(op.request)
        found += [r for r in op.responses.values() if isinstance(r, type)]
    return list(dict.fromkeys(found))


def _content(body: Any) -> dict[str, Any]:
    if isinstance(body, type):
        return {"application/json": {"schema": {"$ref": _REF.format(name=body.__name__)}}}
    return dict(body)


def _operation(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, body in op.responses.items():
        entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
        if body is not None:
            entry["content"] = _content(body)
        if status == 302:
            entry["headers"] = {"Location": {"schema": {"type": "string"}}}
        responses[str(status)] = entry
    for status in op.errors:
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": _content(schemas.ErrorBody),
        }
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
            }
            for p in op.params
        ]
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": _content(op.request)}
    out["security"] = [{"bearer": []}] if op.auth else []
    out.update(op.extra)
    return out


_STATUS_TEXT = {
    101: "Switching protocols to WebSocket",
    200: "OK",
    201: "Created",
    202: "Accepted: durable in the queue",
    204: "No content",
    302: "Redirect",
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process by the app)."""
    _, components = msgspec.json.schema_components(_schema_types(), ref_template=_REF)
    # What msgspec cannot say: a message needs text or at least one attachment.
    components["SendRequest"]["anyOf"] = [
        {"properties": {"text": {"minLength": 1}}},
        {"properties": {"attachments": {"minItems": 1}}, "required": ["attachments"]},
    ]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chat platform gateway",
            "version": API_VERSION,
            "description": "HTTP API v1 of the chat platform. The WebSocket protocol v1 "
            "is described in docs/api.md. Errors are `{\"error\":{\"code\",\"message\"}}`.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
        },
    }  # fmt: skip
