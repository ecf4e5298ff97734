"""Every piece of state the gateway keeps on its ``web.Application``, as typed AppKeys.

Declared here and nowhere else (CONVENTIONS 4); each is set by the cleanup context that
owns the resource (:mod:`gateway.app`), so a handler's dependencies are visible in one
import and mypy checks their types.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from chat.config import Settings
from chat.keys import KeySpace
from chat.storage.attachments import LocalAttachments, S3Attachments
from chat.storage.mongo import MessageStore
from chat.storage.sql import Directory
from chat.streams import BatchingEnqueuer
from gateway.auth import OriginPolicy, Passwords, Tokens
from gateway.hub import Hub
from gateway.limits import SenderGates
from gateway.membership import Membership
from gateway.send import Sender


@dataclass
class Lifecycle:
    """Process-wide state of the gateway's life: readiness and the shutdown switch."""

    started_at: float = field(default_factory=time.time)
    #: Set on SIGTERM: /readyz answers 503, sends are refused, clients told to reconnect.
    stopping: bool = False
    #: Set when background loops must end (cleanup).
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: The advertised ZeroMQ endpoint of this gateway (tests and benchmarks publish to it).
    fanout_endpoint: str = ""


SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
TOKENS = web.AppKey("tokens", Tokens)
PASSWORDS = web.AppKey("passwords", Passwords)
ORIGINS = web.AppKey("origins", OriginPolicy)
SENDER_GATES = web.AppKey("sender_gates", SenderGates)
DIRECTORY = web.AppKey("directory", Directory)
REDIS: web.AppKey[Any] = web.AppKey("redis")
KEYSPACE = web.AppKey("keyspace", KeySpace)
ENQUEUER = web.AppKey("enqueuer", BatchingEnqueuer)
STORE = web.AppKey("store", MessageStore)
ATTACHMENTS: web.AppKey[LocalAttachments | S3Attachments] = web.AppKey("attachments")
MEMBERSHIP = web.AppKey("membership", Membership)
HUB = web.AppKey("hub", Hub)
SENDER = web.AppKey("sender", Sender)
