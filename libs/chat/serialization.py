"""Every shape that crosses a process boundary, and its one encoder/decoder pair.

Three families, each a set of frozen msgspec structs:

* **WebSocket protocol v1** (contract, DESIGN.md): client frames are a tagged union on
  ``type``; server frames put ``type`` first. Decoding a client frame validates it fully
  (unknown ``type``, missing fields, wrong types) and raises :class:`BadRequest`.
* **Queue entries**: what the gateway XADDs. The enqueue script adds ``seq`` and ``ts``
  as separate stream fields (``s``, ``t``) next to the JSON body (``m``), so the
  body is encoded once, before the script, and never rewritten.
* **Stored documents**: the MongoDB ``messages`` document (see :mod:`chat.storage.mongo`).

If you add a field to :class:`QueuedMessage`: give it a default (entries already queued
were encoded without it), and add it to :func:`chat.storage.mongo.to_document` /
:func:`chat.storage.mongo.from_document` if it must be stored. If you add a field to
:class:`MessageFrame`: the web client (services/gateway/static/app.js), the load
tester's decoder and the OpenAPI schema (services/gateway/openapi.py) change with it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from chat.errors import BadRequest, DecodeError

Priority = Literal["live", "bulk"]
ChatId = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
AttachmentKey = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]

#: history/messages page size (contract: L <= 200, default 50).
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 200
#: attachments per message; more is a bad_request.
MAX_ATTACHMENTS = 10


# --------------------------------------------------------------------------- client -> server


class SendFrame(msgspec.Struct, frozen=True, tag="send", tag_field="type"):
    chat_id: ChatId
    client_id: ClientId
    text: str
    attachments: Annotated[list[AttachmentKey], msgspec.Meta(max_length=MAX_ATTACHMENTS)] = []


class ResumeFrame(msgspec.Struct, frozen=True, tag="resume", tag_field="type"):
    cursors: dict[ChatId, Seq]


class HistoryFrame(msgspec.Struct, frozen=True, tag="history", tag_field="type"):
    chat_id: ChatId
    before_seq: Seq | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_MAX_LIMIT)] = HISTORY_DEFAULT_LIMIT


class PingFrame(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    pass


ClientFrame = SendFrame | ResumeFrame | HistoryFrame | PingFrame

# --------------------------------------------------------------------------- server -> client


class ChatCursor(msgspec.Struct, frozen=True):
    chat_id: int
    last_seq: int


class HelloFrame(msgspec.Struct, frozen=True, tag="hello", tag_field="type"):
    user_id: int
    chats: list[ChatCursor]


class AckFrame(msgspec.Struct, frozen=True, tag="ack", tag_field="type"):
    client_id: str | None
    id: str
    chat_id: int
    seq: int
    ts: int
    priority: Priority


class Attachment(msgspec.Struct, frozen=True):
    key: str
    url: str
    content_type: str
    size: int


class MessageFrame(msgspec.Struct, frozen=True, tag="message", tag_field="type"):
    """A persisted message as members see it (also the HTTP message object, minus type)."""

    id: str
    chat_id: int
    seq: int
    ts: int
    sender_id: int
    sender_name: str
    text: str
    attachments: list[Attachment]
    priority: Priority


class HistoryReply(msgspec.Struct, frozen=True, tag="history", tag_field="type"):
    chat_id: int
    messages: list[MessageFrame]


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="type", omit_defaults=True):
    code: str
    message: str
    client_id: str | None = None


class PongFrame(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    pass


class ReconnectFrame(msgspec.Struct, frozen=True, tag="reconnect", tag_field="type"):
    after_ms: int


ServerFrame = (
    HelloFrame | AckFrame | MessageFrame | HistoryReply | ErrorFrame | PongFrame | ReconnectFrame
)

# --------------------------------------------------------------------------- queue entries


class QueuedMessage(msgspec.Struct, frozen=True, array_like=True):
    """The body of a stream entry. ``array_like``: no field names on the hot path.

    Field order is the wire format: append new fields at the end, with defaults.
    """

    id: str
    chat_id: int
    sender_id: int
    text: str
    attachments: list[str]
    priority: Priority
    client_id: str | None = None


class QueuedEntry(msgspec.Struct, frozen=True):
    """A queue entry with the fields the enqueue script assigned."""

    stream_id: str
    message: QueuedMessage
    seq: int
    ts: int


# --------------------------------------------------------------------------- codecs

_json_encoder = msgspec.json.Encoder()
_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_message_decoder = msgspec.json.Decoder(MessageFrame)
_queued_encoder = msgspec.json.Encoder()
_queued_decoder = msgspec.json.Decoder(QueuedMessage)


def encode_frame(frame: ServerFrame | ClientFrame) -> bytes:
    """JSON bytes of a frame, ``type`` first."""
    return _json_encoder.encode(frame)


def encode_json(value: Any) -> bytes:
    """JSON bytes of any msgspec-encodable value (HTTP bodies)."""
    return _json_encoder.encode(value)


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Validate one client frame; every problem becomes :class:`BadRequest`."""
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid frame: {e}") from e
    except msgspec.DecodeError as e:
        raise BadRequest("malformed JSON") from e


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Decode a server frame (clients and tests)."""
    try:
        return _server_decoder.decode(data)
    except msgspec.MsgspecError as e:
        raise DecodeError(f"invalid server frame: {e}") from e


def decode_message_frame(data: str | bytes) -> MessageFrame:
    """Decode a ``message`` frame as published on the fan-out."""
    try:
        return _message_decoder.decode(data)
    except msgspec.MsgspecError as e:
        raise DecodeError(f"invalid message frame: {e}") from e


def encode_queued(message: QueuedMessage) -> bytes:
    """Body of a stream entry: a JSON array (``array_like``), always valid UTF-8.

    JSON rather than msgpack because the enqueue script receives a whole batch as one
    msgpack argument and Redis's ``cmsgpack`` reads ``str`` but not ``bin`` values: a
    UTF-8 body rides inside the batch as a string (see :mod:`chat.streams`).
    """
    return _queued_encoder.encode(message)


def decode_queued(data: bytes) -> QueuedMessage:
    """Inverse of :func:`encode_queued`; raises :class:`DecodeError` on a bad entry."""
    try:
        return _queued_decoder.decode(data)
    except msgspec.MsgspecError as e:
        raise DecodeError(f"invalid queue entry: {e}") from e


def http_error_body(code: str, message: str) -> bytes:
    """The HTTP error body of the contract: ``{"error":{"code":E,"message":"…"}}``."""
    return _json_encoder.encode({"error": {"code": code, "message": message}})
