"""HTTP API v1 handlers (DESIGN.md contract plus the additions documented in docs/api.md).

Handlers raise :mod:`chat.errors`; :func:`error_middleware` is the one place that turns
them (and aiohttp's own HTTP errors) into the contract's ``{"error":{code,message}}``
bodies with the status from ``chat.errors.HTTP_STATUS``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from chat.errors import (
    HTTP_STATUS,
    BadRequest,
    ClientError,
    ErrorCode,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from chat.serialization import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, http_error_body
from chat.storage.attachments import MAX_ATTACHMENT_BYTES, LocalAttachments, owner_of
from gateway import appkeys, schemas
from gateway.auth import Principal, authenticate
from gateway.cursors import last_seqs
from gateway.limits import Verdict

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = msgspec.json.Encoder()

#: aiohttp's own errors (unknown route, wrong method, body too large) in contract codes.
_HTTP_CODES: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    413: "too_large",
    429: "rate_limited",
}


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type=JSON)


def error_response(code: ErrorCode, message: str, status: int | None = None) -> web.Response:
    return web.Response(
        body=http_error_body(code, message),
        status=status or HTTP_STATUS[code],
        content_type=JSON,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClientError as e:
        response = error_response(e.code, e.message)
        if isinstance(e, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except web.HTTPException as e:
        code = _HTTP_CODES.get(e.status)
        if code is None:
            raise
        response = error_response(code, e.reason, e.status)
        if "Allow" in e.headers:  # 405 must list the methods (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except (SQLAlchemyError, PyMongoError, RedisError) as e:
        log.warning("dependency error", extra={"path": request.path, "error": type(e).__name__})
        return error_response("unavailable", "a dependency is unavailable, retry later")


def principal(request: web.Request) -> Principal:
    return authenticate(request, request.app[appkeys.TOKENS])


async def body_of(request: web.Request, kind: type[schemas.T]) -> schemas.T:
    return schemas.decode_body(await request.read(), kind)


def chat_id_of(request: web.Request) -> int:
    return int(request.match_info["chat_id"])


def _int_param(request: web.Request, name: str, *, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


# --------------------------------------------------------------------------- accounts


async def signup(request: web.Request) -> web.Response:
    body = await body_of(request, schemas.SignupRequest)
    app = request.app
    password_hash = await app[appkeys.PASSWORDS].hash(body.password)
    user_id = await app[appkeys.DIRECTORY].create_user(
        email=body.email, password_hash=password_hash, name=body.name, kind=body.kind
    )
    who = Principal(user_id=user_id, name=body.name, kind=body.kind)
    return json_response(
        schemas.TokenResponse(user_id=user_id, token=app[appkeys.TOKENS].issue(who)), 201
    )


async def login(request: web.Request) -> web.Response:
    body = await body_of(request, schemas.LoginRequest)
    app = request.app
    user = await app[appkeys.DIRECTORY].user_by_email(body.email)
    ok = await app[appkeys.PASSWORDS].verify(user.password_hash if user else None, body.password)
    if not ok or user is None:
        raise Unauthorized("wrong e-mail or password")
    who = Principal(user_id=user.id, name=user.name, kind=user.kind)
    return json_response(
        schemas.TokenResponse(user_id=user.id, token=app[appkeys.TOKENS].issue(who))
    )


async def bulk_signup(request: web.Request) -> web.Response:
    app = request.app
    limit = app[appkeys.SETTINGS].bulk_signup_max
    if limit == 0:
        raise NotFound("bulk signup is disabled (BULK_SIGNUP_MAX=0)")
    body = await body_of(request, schemas.BulkSignupRequest)
    if len(body.accounts) > limit:
        raise BadRequest(f"at most {limit} accounts per request")
    # One hash for the batch: these accounts are synthetic and share the password anyway.
    password_hash = await app[appkeys.PASSWORDS].hash(body.password)
    ids = await app[appkeys.DIRECTORY].create_users(
        [(a.email, a.name) for a in body.accounts], password_hash=password_hash, kind=body.kind
    )
    tokens = app[appkeys.TOKENS]
    users = [
        schemas.BulkUser(
            user_id=uid,
            email=a.email.lower(),
            token=tokens.issue(Principal(user_id=uid, name=a.name, kind=body.kind)),
        )
        for uid, a in zip(ids, body.accounts, strict=True)
    ]
    return json_response(schemas.BulkSignupResponse(users=users), 201)


async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return json_response(schemas.Me(user_id=who.user_id, name=who.name, kind=who.kind))


async def lookup_user(request: web.Request) -> web.Response:
    principal(request)
    email = request.query.get("email", "").strip()
    if not email:
        raise BadRequest("email query parameter is required")
    user = await request.app[appkeys.DIRECTORY].user_by_email(email)
    if user is None:
        raise NotFound("no user with that e-mail")
    return json_response(schemas.UserSummary(user_id=user.id, name=user.name))


# --------------------------------------------------------------------------- chats


async def create_chat(request: web.Request) -> web.Response:
    who = principal(request)
    body = await body_of(request, schemas.CreateChatRequest)
    app = request.app
    chat_id = await app[appkeys.DIRECTORY].create_chat(
        title=body.title, creator_id=who.user_id, member_ids=body.member_ids
    )
    await app[appkeys.MEMBERSHIP].changed(chat_id)
    return json_response(schemas.ChatCreated(chat_id=chat_id), 201)


async def list_chats(request: web.Request) -> web.Response:
    who = principal(request)
    app = request.app
    chats = await app[appkeys.DIRECTORY].chats_of(who.user_id)
    membership = app[appkeys.MEMBERSHIP]
    for chat in chats:
        membership.prime(chat.id, frozenset(chat.member_ids))
    seqs = await last_seqs(app[appkeys.REDIS], app[appkeys.KEYSPACE], [c.id for c in chats])
    return json_response(
        schemas.ChatList(
            chats=[
                schemas.ChatSummary(
                    chat_id=c.id, title=c.title, member_ids=c.member_ids, last_seq=seqs[c.id]
                )
                for c in chats
            ]
        )
    )


async def add_members(request: web.Request) -> web.Response:
    who = principal(request)
    chat_id = chat_id_of(request)
    body = await body_of(request, schemas.AddMembersRequest)
    app = request.app
    await app[appkeys.MEMBERSHIP].require_member(chat_id, who.user_id)
    members = await app[appkeys.DIRECTORY].add_members(chat_id, body.member_ids)
    await app[appkeys.MEMBERSHIP].changed(chat_id)
    return json_response(schemas.Members(chat_id=chat_id, member_ids=members))


# --------------------------------------------------------------------------- messages


async def list_messages(request: web.Request) -> web.Response:
    who = principal(request)
    chat_id = chat_id_of(request)
    after = _int_param(request, "after_seq", low=0, high=2**53)
    before = _int_param(request, "before_seq", low=0, high=2**53)
    limit = _int_param(request, "limit", low=1, high=HISTORY_MAX_LIMIT) or HISTORY_DEFAULT_LIMIT
    app = request.app
    await app[appkeys.MEMBERSHIP].require_member(chat_id, who.user_id)
    frames = await app[appkeys.STORE].between(chat_id, after, before, limit)
    return json_response(schemas.MessageList(messages=[schemas.message_object(f) for f in frames]))


async def post_message(request: web.Request) -> web.Response:
    who = principal(request)
    chat_id = chat_id_of(request)
    app = request.app
    if app[appkeys.LIFECYCLE].stopping:
        raise Unavailable("gateway is restarting, retry")
    if app[appkeys.SENDER_GATES].check(who.user_id) is not Verdict.PASS:
        raise RateLimited("too many sends: slow down")
    body = await body_of(request, schemas.SendRequest)
    accepted = await app[appkeys.SENDER].send(
        who, chat_id, body.text, list(body.attachments), body.client_id
    )
    return json_response(
        schemas.SendAccepted(
            id=accepted.id,
            chat_id=accepted.chat_id,
            seq=accepted.seq,
            ts=accepted.ts,
            priority=accepted.priority,
        ),
        202,
    )


# --------------------------------------------------------------------------- attachments


async def create_upload(request: web.Request) -> web.Response:
    who = principal(request)
    body = await body_of(request, schemas.UploadRequest)
    slot = await request.app[appkeys.ATTACHMENTS].create_upload(
        who.user_id, body.content_type, body.size
    )
    return json_response(schemas.UploadSlot(key=slot.key, upload_url=slot.upload_url), 201)


def _key_of(request: web.Request) -> str:
    key = request.match_info["key"]
    owner_of(key)  # BadRequest unless <user_id>/<uuid>
    return key


async def get_attachment(request: web.Request) -> web.StreamResponse:
    principal(request)
    key = _key_of(request)
    store = request.app[appkeys.ATTACHMENTS]
    await store.info(key)  # NotFound before redirecting to nothing
    raise web.HTTPFound(await store.download_url(key))


def _local_store(request: web.Request) -> LocalAttachments:
    store = request.app[appkeys.ATTACHMENTS]
    if not isinstance(store, LocalAttachments):
        raise NotFound("uploads go to S3 here: use the upload_url you were given")
    return store


async def upload_attachment(request: web.Request) -> web.Response:
    """The local stand-in for an S3 presigned PUT: the HMAC binds key, type and size."""
    store = _local_store(request)
    key = _key_of(request)
    content_type = request.query.get("content_type", "")
    size = _int_param(request, "size", low=1, high=MAX_ATTACHMENT_BYTES)
    sig = request.query.get("sig", "")
    if size is None or not hmac.compare_digest(sig, store.signature(key, content_type, size)):
        raise Forbidden("invalid upload signature")
    if request.content_length not in (None, size):
        raise BadRequest(f"body must be exactly {size} bytes")
    data = await request.content.read(size + 1)
    if len(data) != size:
        raise TooLarge(f"body must be exactly {size} bytes")
    await asyncio.to_thread(store.write, key, content_type, data)
    return web.Response(status=204)


async def attachment_content(request: web.Request) -> web.StreamResponse:
    store = _local_store(request)
    key = _key_of(request)
    info = await store.info(key)
    response = web.FileResponse(store.path(key))
    response.content_type = info.content_type
    # User content on our origin: never let it run script or be sniffed as HTML.
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
