"""Protocol v1 frames and queue entries: validation and round trips."""

from __future__ import annotations

import pytest

from chat.errors import BadRequest, DecodeError
from chat.serialization import (
    AckFrame,
    ErrorFrame,
    HistoryFrame,
    PingFrame,
    QueuedMessage,
    ResumeFrame,
    SendFrame,
    decode_client_frame,
    decode_queued,
    encode_frame,
    encode_queued,
)


def test_send_frame_decodes_with_defaults() -> None:
    """A minimal send frame decodes; attachments default to an empty list."""
    f = decode_client_frame(b'{"type":"send","chat_id":3,"client_id":"a","text":"hi"}')
    assert f == SendFrame(chat_id=3, client_id="a", text="hi", attachments=[])


def test_resume_cursors_use_integer_chat_ids() -> None:
    """JSON object keys of resume cursors become integer chat ids."""
    f = decode_client_frame(b'{"type":"resume","cursors":{"7":12,"9":0}}')
    assert f == ResumeFrame(cursors={7: 12, 9: 0})


def test_history_limit_defaults_and_is_capped() -> None:
    """history limit defaults to 50 and may not exceed 200."""
    assert decode_client_frame(b'{"type":"history","chat_id":1}') == HistoryFrame(
        chat_id=1, before_seq=None, limit=50
    )
    with pytest.raises(BadRequest):
        decode_client_frame(b'{"type":"history","chat_id":1,"limit":201}')


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"type":"dance"}',
        b'{"chat_id":1}',
        b'{"type":"send","chat_id":"1","client_id":"a","text":"x"}',
        b'{"type":"send","chat_id":1,"text":"x"}',
        b'{"type":"send","chat_id":0,"client_id":"a","text":"x"}',
        b'{"type":"send","chat_id":1,"client_id":"","text":"x"}',
        b'{"type":"resume","cursors":{"x":1}}',
    ],
)
def test_invalid_client_frames_raise_bad_request(raw: bytes) -> None:
    """Bad JSON, unknown type, missing or mistyped fields all become BadRequest."""
    with pytest.raises(BadRequest):
        decode_client_frame(raw)


def test_ping_is_accepted() -> None:
    """ping has no fields."""
    assert decode_client_frame('{"type":"ping"}') == PingFrame()


def test_server_frames_put_type_first() -> None:
    """Encoded server frames start with the type field (contract)."""
    ack = AckFrame(client_id="c", id="i", chat_id=1, seq=2, ts=3, priority="live")
    assert encode_frame(ack).startswith(b'{"type":"ack",')
    assert encode_frame(ErrorFrame(code="forbidden", message="no")) == (
        b'{"type":"error","code":"forbidden","message":"no"}'
    )


def test_queued_message_round_trip_and_corruption() -> None:
    """Queue bodies round-trip; a corrupt body raises DecodeError (dead-letter it)."""
    m = QueuedMessage(
        id="x", chat_id=1, sender_id=2, text="é", attachments=["k"], priority="bulk", client_id=None
    )
    assert decode_queued(encode_queued(m)) == m
    with pytest.raises(DecodeError):
        decode_queued(b"\xc1garbage")
