"""HTTP API v1 bodies (DESIGN.md contract), as msgspec structs.

These structs are the single description of the HTTP shapes: handlers decode requests
and encode responses with them, and the OpenAPI document (:mod:`gateway.openapi`) is
generated from them, so the document cannot drift from the code. The WebSocket frames and
the message object live in :mod:`chat.serialization`; :class:`Message` here is the
``message`` frame without ``type`` (contract), kept field-for-field identical by a test.

If you add a field: give it a default when it is in a request (old clients omit it), and
update docs/api.md; the OpenAPI document follows by itself. Unknown request fields are
ignored (msgspec's default), for forward compatibility.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

import msgspec

from chat.errors import BadRequest
from chat.serialization import (
    MAX_ATTACHMENTS,
    ClientId,
    MessageFrame,
    Priority,
)
from chat.storage.attachments import MAX_ATTACHMENT_BYTES
from chat.storage.sql import UserKind

#: Explicit whitespace class: JSON Schema (ECMA) and Python disagree on what backslash-s
#: covers, and the OpenAPI document must accept exactly what the server accepts.
Email = Annotated[
    str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@ \t\r\n]+@[^@ \t\r\n]+$")
]
#: ``<user_id>/<uuid>`` as handed out by POST /api/v1/attachments (chat.storage.attachments).
AttachmentKey = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+/[0-9a-f-]{36}$")]
#: argon2 hashes any length; the cap keeps a request from buying seconds of CPU.
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
LoginPassword = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Title = Annotated[str, msgspec.Meta(max_length=200)]
UserId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
#: Members named in one request (a chat may grow beyond this over several requests).
MAX_MEMBERS_PER_REQUEST = 1000
MemberIds = Annotated[list[UserId], msgspec.Meta(max_length=MAX_MEMBERS_PER_REQUEST)]


# --------------------------------------------------------------------------- auth


class SignupRequest(msgspec.Struct, frozen=True):
    email: Email
    password: Password
    name: DisplayName
    kind: UserKind = "human"


class LoginRequest(msgspec.Struct, frozen=True):
    email: Email
    password: LoginPassword


class TokenResponse(msgspec.Struct, frozen=True):
    user_id: int
    token: str


class BulkAccount(msgspec.Struct, frozen=True):
    email: Email
    name: DisplayName


class BulkSignupRequest(msgspec.Struct, frozen=True):
    """Load-test provisioning: many non-human accounts sharing one password (one hash)."""

    password: Password
    accounts: Annotated[list[BulkAccount], msgspec.Meta(min_length=1)]
    kind: Literal["loadtest", "bot"] = "loadtest"


class BulkUser(msgspec.Struct, frozen=True):
    user_id: int
    email: str
    token: str


class BulkSignupResponse(msgspec.Struct, frozen=True):
    users: list[BulkUser]


class Me(msgspec.Struct, frozen=True):
    user_id: int
    name: str
    kind: UserKind


class UserSummary(msgspec.Struct, frozen=True):
    user_id: int
    name: str


# --------------------------------------------------------------------------- chats


class CreateChatRequest(msgspec.Struct, frozen=True):
    member_ids: MemberIds
    title: Title = ""


class ChatCreated(msgspec.Struct, frozen=True):
    chat_id: int


class ChatSummary(msgspec.Struct, frozen=True):
    chat_id: int
    title: str
    member_ids: list[int]
    last_seq: int


class ChatList(msgspec.Struct, frozen=True):
    chats: list[ChatSummary]


class AddMembersRequest(msgspec.Struct, frozen=True):
    member_ids: Annotated[list[UserId], msgspec.Meta(min_length=1, max_length=1000)]


class Members(msgspec.Struct, frozen=True):
    chat_id: int
    member_ids: list[int]


# --------------------------------------------------------------------------- messages


class Attachment(msgspec.Struct, frozen=True):
    key: str
    url: str
    content_type: str
    size: int


class Message(msgspec.Struct, frozen=True):
    """The ``message`` frame of protocol v1 without ``type``."""

    id: str
    chat_id: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    attachments: list[Attachment]
    priority: Priority


class MessageList(msgspec.Struct, frozen=True):
    messages: list[Message]


class SendRequest(msgspec.Struct, frozen=True):
    text: str
    client_id: ClientId | None = None
    attachments: Annotated[list[AttachmentKey], msgspec.Meta(max_length=MAX_ATTACHMENTS)] = []


class SendAccepted(msgspec.Struct, frozen=True):
    id: str
    chat_id: int
    seq: int
    ts: int
    priority: Priority


# --------------------------------------------------------------------------- attachments


class UploadRequest(msgspec.Struct, frozen=True):
    content_type: Annotated[
        str,
        msgspec.Meta(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+$"),
    ]
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTACHMENT_BYTES)]


class UploadSlot(msgspec.Struct, frozen=True):
    key: str
    upload_url: str


# --------------------------------------------------------------------------- operations


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, str]


def message_object(frame: MessageFrame) -> Message:
    """The HTTP message object of a stored message frame."""
    return Message(
        id=frame.id,
        chat_id=frame.chat_id,
        seq=frame.seq,
        ts=frame.ts,
        sender_id=frame.sender_id,
        sender_name=frame.sender_name,
        text=frame.text,
        attachments=[
            Attachment(key=a.key, url=a.url, content_type=a.content_type, size=a.size)
            for a in frame.attachments
        ],
        priority=frame.priority,
    )


T = TypeVar("T")
_decoders: dict[type, msgspec.json.Decoder[object]] = {}


def decode_body(body: bytes, kind: type[T]) -> T:
    """Validate a JSON request body; every problem is a :class:`BadRequest`."""
    decoder = _decoders.get(kind)
    if decoder is None:
        # strict=False: JSON Schema calls 3.0 an integer, so the API accepts it as 3.
        decoder = _decoders[kind] = msgspec.json.Decoder(kind, strict=False)
    try:
        return decoder.decode(body)  # type: ignore[return-value]
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid body: {e}") from e
    except msgspec.DecodeError as e:
        raise BadRequest("body must be a JSON object") from e


__all__ = [
    "AddMembersRequest",
    "BulkSignupRequest",
    "BulkSignupResponse",
    "ChatCreated",
    "ChatList",
    "CreateChatRequest",
    "ErrorBody",
    "Health",
    "LoginRequest",
    "Me",
    "Members",
    "MessageList",
    "Readiness",
    "SendAccepted",
    "SendRequest",
    "SignupRequest",
    "TokenResponse",
    "UploadRequest",
    "UploadSlot",
    "UserSummary",
    "decode_body",
    "message_object",
]
