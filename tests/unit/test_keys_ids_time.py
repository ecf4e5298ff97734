"""Partitioning contract, ids and timestamps."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import pytest

from chat.ids import id_timestamp_ms, new_message_id
from chat.keys import KeySpace, partition_of
from chat.timestamps import datetime_to_ms, ms_to_datetime, now_ms


def test_partition_is_crc32_of_decimal_chat_id() -> None:
    """partition = crc32(str(chat_id)) mod STREAM_PARTITIONS, the contract JMeter uses."""
    for chat_id in (1, 7, 12345, 2**40):
        assert partition_of(chat_id, 16) == zlib.crc32(str(chat_id).encode()) % 16
    assert [partition_of(c, 16) for c in (1, 2, 3)] == [
        zlib.crc32(b"1") % 16,
        zlib.crc32(b"2") % 16,
        zlib.crc32(b"3") % 16,
    ]


def test_key_names_follow_the_documented_layout() -> None:
    """Keys are <prefix>chat:{p}:<name>, partition in the hash tag."""
    part = KeySpace("x:", 16).partition(7)
    assert (part.live, part.bulk, part.seq) == (
        "x:chat:{7}:live",
        "x:chat:{7}:bulk",
        "x:chat:{7}:seq",
    )
    with pytest.raises(ValueError, match="braces"):
        KeySpace("{bad}", 16)


def test_message_ids_are_time_ordered_and_unique() -> None:
    """UUIDv7 ids sort by creation time and embed it in ms."""
    before = now_ms()
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert before <= id_timestamp_ms(ids[0]) <= now_ms()


def test_ms_datetime_round_trip_is_exact() -> None:
    """ms -> BSON datetime -> ms loses nothing, naive datetimes are UTC."""
    for ms in (0, 1, 1_763_913_600_123, 4_102_444_800_999):
        assert datetime_to_ms(ms_to_datetime(ms)) == ms
    assert datetime_to_ms(datetime(2026, 1, 1, 0, 0, 0, 1000)) == datetime_to_ms(
        datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
    )
