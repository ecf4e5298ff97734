"""Errors of the chat platform, and their one mapping to protocol codes.

::

    ChatError                       base; never raised itself
    ├── ConfigError                 a setting is invalid: the process must not start
    ├── ClientError                 the request is wrong; reported to the client, nothing lost
    │   ├── BadRequest              bad_request   400  (bad JSON, missing or wrong fields)
    │   ├── Unauthorized            unauthorized  401  (bad or expired token, bad password)
    │   ├── Forbidden               forbidden     403  (not a member)
    │   ├── NotFound                not_found     404
    │   ├── Conflict                conflict      409  (e-mail already registered)
    │   ├── TooLarge                too_large     413  (text over MAX_TEXT_BYTES)
    │   └── RateLimited             rate_limited  429
    ├── Unavailable                 unavailable   503  a dependency is down or backlogged;
    │                                                   retry later, nothing was accepted
    └── DecodeError                 a stored or queued payload cannot be decoded:
                                    skip this entry (dead-letter it), the process is fine

"Skip this message" (``DecodeError``, ``ClientError``) is kept apart from "this process
is broken" (anything else escaping a consumer loop), which is left to crash so the
supervisor restarts the task.

``HTTP_STATUS`` and ``WS_CLOSE`` are the only places codes map to HTTP statuses and
WebSocket close codes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "rate_limited",
    "unavailable",
]


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ChatError):
    """A setting is invalid; the message names the environment variable."""


class ClientError(ChatError):
    """The client sent something wrong. Carries the protocol error code."""

    code: ClassVar[ErrorCode] = "bad_request"

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.client_id = client_id


class BadRequest(ClientError):
    code = "bad_request"


class Unauthorized(ClientError):
    code = "unauthorized"


class Forbidden(ClientError):
    code = "forbidden"


class NotFound(ClientError):
    code = "not_found"


class Conflict(ClientError):
    code = "conflict"


class TooLarge(ClientError):
    code = "too_large"


class RateLimited(ClientError):
    code = "rate_limited"


class Unavailable(ClientError):
    """A dependency is unreachable or the queue is over its backlog cap; nothing accepted."""

    code = "unavailable"


class DecodeError(ChatError):
    """A payload from the queue or the database is malformed."""


HTTP_STATUS: dict[ErrorCode, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}

#: WebSocket close codes (RFC 6455 section 7.4.1) used by the gateway.
WS_CLOSE_POLICY = 1008  # flood past the rate limit
WS_CLOSE_TOO_BIG = 1009  # frame over MAX_FRAME_BYTES
WS_CLOSE_RESTART = 1012  # graceful shutdown: reconnect
WS_CLOSE_TRY_AGAIN = 1013  # slow consumer: send buffer full, reconnect and resume
