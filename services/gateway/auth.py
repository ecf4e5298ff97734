"""Accounts and tokens: argon2id password hashes, HS256 JWTs, the browser Origin allowlist.

* Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes, ~50 ms).
  Hashing runs on a small dedicated thread pool: it releases the GIL, and bounding the
  pool bounds both the CPU a signup storm can take from message traffic and the memory
  (64 MiB per concurrent hash). A login for an unknown e-mail still verifies against a
  dummy hash so response time does not reveal which e-mails are registered.
* Tokens are JWTs (HS256) carrying the user id, display name and account kind, so the
  WebSocket handshake and every HTTP request authenticate without touching SQL. They
  expire after ``JWT_TTL_S``; the secret comes from ``JWT_SECRET`` (ECS injects it from
  Secrets Manager). Every gateway of a deployment must share it.
* Browsers send ``Origin`` on the WebSocket handshake and do not apply the same-origin
  policy to it, so ``/ws`` checks it: against ``ALLOWED_ORIGINS`` when set, else the
  request's own host. Clients that send no ``Origin`` (bots, load testers) pass.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from chat.errors import Unauthorized
from chat.storage.sql import USER_KINDS, UserKind

#: Concurrent argon2 hashes; each holds 64 MiB and one core for ~50 ms.
HASH_THREADS = 2
JWT_ALGORITHM = "HS256"
#: Clock skew tolerated between gateways when checking ``exp``/``iat``.
JWT_LEEWAY_S = 5


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, as the token states it."""

    user_id: int
    name: str
    kind: UserKind

    @property
    def interactive(self) -> bool:
        """Humans are interactive (live class); bots and load-test accounts never are."""
        return self.kind == "human"


class Passwords:
    """argon2id hashing off the event loop."""

    def __init__(self, threads: int = HASH_THREADS) -> None:
        self._hasher = PasswordHasher()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._dummy = self._hasher.hash("timing-equaliser")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; ``None`` (unknown user) costs the same time."""
        loop = asyncio.get_running_loop()
        target = password_hash or self._dummy
        try:
            await loop.run_in_executor(self._pool, self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Tokens:
    """Issue and verify the platform's JWTs."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if not secret:
            raise ValueError("JWT secret must not be empty")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, who: Principal, *, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "sub": str(who.user_id),
            "name": who.name,
            "kind": who.kind,
            "iat": issued,
            "exp": issued + self.ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The token's principal; :class:`Unauthorized` if it is bad, forged or expired."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["sub", "exp", "iat"]},
                leeway=JWT_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError as e:
            raise Unauthorized("token expired") from e
        except jwt.PyJWTError as e:
            raise Unauthorized("invalid token") from e
        kind = claims.get("kind", "human")
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError) as e:
            raise Unauthorized("invalid token subject") from e
        if kind not in USER_KINDS or user_id < 1:
            raise Unauthorized("invalid token claims")
        return Principal(user_id=user_id, name=str(claims.get("name", "")), kind=kind)


def request_token(request: web.Request) -> str | None:
    """``Authorization: Bearer <jwt>``, else the ``token`` query parameter (WebSocket
    handshakes and attachment links from browsers cannot set headers)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.query.get("token")
    return token or None


def authenticate(request: web.Request, tokens: Tokens) -> Principal:
    token = request_token(request)
    if token is None:
        raise Unauthorized("missing token: send Authorization: Bearer <token>")
    return tokens.verify(token)


class OriginPolicy:
    """Which browser pages may open ``/ws``."""

    def __init__(self, allowed: str) -> None:
        self._allowed = frozenset(
            o.strip().rstrip("/").lower() for o in allowed.split(",") if o.strip()
        )
        self._any = "*" in self._allowed

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser: the token alone authenticates it
        origin = origin.strip().rstrip("/").lower()
        if self._any or origin in self._allowed:
            return True
        if self._allowed:
            return False
        return bool(host) and urlsplit(origin).netloc == (host or "").lower()
