"""Accounts and chats for a run, through HTTP API v1 (DESIGN.md), with a bounded pool.

Accounts are reused across runs: their e-mails are deterministic
(``<prefix>-<shard>-<i>@loadtest.invalid``). New ones are created in batches through
``POST /api/v1/auth/bulk-signup`` (one password hash per batch); a batch it refuses
(some already exist) goes account by account, where a 409 on signup means "exists" and
turns into a login. Signup and login hash a password on the gateway (tens of ms each),
so a pool of ``concurrency`` requests runs at a time: enough to keep every gateway core
busy, few enough not to time out. Chats are created fresh for every run (title = run id), so
every message stored in them belongs to the run and verify needs no time window.

Chat layout: the accounts are split into one group per generator process; every chat's
members come from one group (its creator first), so each process sends to and receives
from its own chats only and no frame crosses processes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from loadtest.distributions import IntDistribution

log = logging.getLogger(__name__)

EMAIL_DOMAIN = "loadtest.invalid"  # RFC 2606: never a real mailbox
#: Accounts per bulk-signup request (the gateway's BULK_SIGNUP_MAX default is 1000).
BULK_BATCH = 500
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status} {body[:200]}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Account:
    user_id: int
    token: str
    email: str


@dataclass(frozen=True, slots=True)
class ChatPlan:
    process: int
    member_indices: tuple[int, ...]  # indices into the account list; creator first


class Api:
    """The few HTTP API v1 routes the generator uses."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    async def _json(
        self, method: str, path: str, what: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.request(
            method, self.base_url + path, json=body, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 500 or resp.status in (400, 401, 403, 404, 413, 429):
                raise ApiError(resp.status, text, what)
            return resp.status, (await resp.json(content_type=None)) if text else None

    async def signup_or_login(self, email: str, password: str, name: str, kind: str) -> Account:
        body = {"email": email, "password": password, "name": name, "kind": kind}
        status, data = await self._json("POST", "/api/v1/auth/signup", "signup", body=body)
        if status == 409:
            status, data = await self._json(
                "POST",
                "/api/v1/auth/login",
                "login",
                body={"email": email, "password": password},
            )
        if status not in (200, 201):
            raise ApiError(status, str(data), f"signup/login {email}")
        return Account(user_id=int(data["user_id"]), token=str(data["token"]), email=email)

    async def bulk_signup(
        self, accounts: Sequence[tuple[str, str]], password: str, kind: str
    ) -> list[Account] | None:
        """``POST /api/v1/auth/bulk-signup`` (docs/api.md); None when the gateway refuses
        the batch as a whole (an account exists, or the route is off or absent)."""
        body = {
            "password": password,
            "kind": kind,
            "accounts": [{"email": e, "name": n} for e, n in accounts],
        }
        try:
            status, data = await self._json("POST", "/api/v1/auth/bulk-signup", "bulk", body=body)
        except ApiError as e:
            if e.status in (400, 404, 405):
                return None
            raise
        if status != 201:
            return None
        return [Account(int(u["user_id"]), str(u["token"]), str(u["email"])) for u in data["users"]]

    async def create_chat(self, token: str, title: str, member_ids: Sequence[int]) -> int:
        status, data = await self._json(
            "POST",
            "/api/v1/chats",
            "create chat",
            token=token,
            body={"title": title, "member_ids": list(member_ids)},
        )
        if status != 201:
            raise ApiError(status, str(data), "create chat")
        return int(data["chat_id"])


async def bounded(
    concurrency: int, jobs: Sequence[Callable[[], Awaitable[T]]], *, retries: int = 3
) -> list[T]:
    """Run ``jobs`` with at most ``concurrency`` at a time, retrying transient failures."""
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            for attempt in range(retries + 1):
                try:
                    return await job()
                except (aiohttp.ClientError, TimeoutError, ApiError) as e:
                    transient = not isinstance(e, ApiError) or e.status in (429, 503)
                    if not transient or attempt == retries:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)
            raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def email_of(prefix: str, shard: int, i: int) -> str:
    return f"{prefix}-{shard}-{i}@{EMAIL_DOMAIN}"


async def provision_accounts(
    api: Api,
    *,
    prefix: str,
    shard: int,
    count: int,
    password: str,
    kind: str,
    concurrency: int,
) -> list[Account]:
    """New non-human accounts through the bulk route (one password hash per batch); any
    batch the bulk route refuses (accounts exist: 409, route off: 404) account by
    account through signup-or-login, which also serves every later run."""
    names = [(email_of(prefix, shard, i), f"{prefix} {shard}.{i}") for i in range(count)]
    accounts: list[Account] = []
    for start in range(0, count, BULK_BATCH):
        batch = names[start : start + BULK_BATCH]
        bulk = await api.bulk_signup(batch, password, kind) if kind != "human" else None
        if bulk is None:

            def job(email: str, name: str) -> Callable[[], Awaitable[Account]]:
                return lambda: api.signup_or_login(email, password, name, kind)

            bulk = await bounded(concurrency, [job(e, n) for e, n in batch])
        accounts += bulk
    return accounts


def plan_chats(
    accounts: int, chats: int, processes: int, sizes: IntDistribution, seed: int
) -> list[ChatPlan]:
    """Chat k belongs to process k mod P; its members are consecutive accounts of that
    process's group (account a is in group a mod P), starting at a rotating creator."""
    rng = random.Random(seed)
    groups = [list(range(p, accounts, processes)) for p in range(processes)]
    plans = []
    for k in range(chats):
        p = k % processes
        group = groups[p]
        if not group:
            raise ValueError(f"process {p} has no account: use at least {processes} users")
        size = max(1, min(sizes.sample(rng), len(group)))
        start = (k // processes) % len(group)
        members = tuple(group[(start + j) % len(group)] for j in range(size))
        plans.append(ChatPlan(process=p, member_indices=members))
    return plans


async def create_chats(
    api: Api, accounts: Sequence[Account], plans: Sequence[ChatPlan], title: str, concurrency: int
) -> list[int]:
    def job(plan: ChatPlan) -> Callable[[], Awaitable[int]]:
        creator = accounts[plan.member_indices[0]]
        others = [accounts[i].user_id for i in plan.member_indices[1:]]
        return lambda: api.create_chat(creator.token, title, others)

    return await bounded(concurrency, [job(p) for p in plans])
