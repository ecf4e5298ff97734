"""Per-send records: what the generator sent, what came back, and when.

One row per message the generator tried to send, written by the process that sent it
into its own chunk files ``records/<shard>-<process>-<n>.msgpack``: columnar msgpack
(one list per field), ~40 bytes a row, so tens of millions of rows stay a few GB on
disk and cost one append per field on the hot path. ``verify`` joins them with MongoDB
by ``(chat_id, seq)`` and ``id``; JMeter results become the same rows (:mod:`loadtest.jtl`).

If you add a field: append it to :class:`RecordChunk` with a default (older chunks lack
it), fill it in :meth:`RecordWriter.add` and read it in :class:`Record`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

RECORDS_DIR = "records"
#: Rows per chunk file: bounded memory per process, a few MB per file.
CHUNK_ROWS = 50_000
LIVE = 1
BULK = 0


class RecordChunk(msgspec.Struct, array_like=True):
    """Columns of one chunk; all lists have the same length."""

    client_id: list[str]
    chat_id: list[int]
    klass: list[int]  # LIVE (probe user) or BULK (load account): the class requested
    send_ns: list[int]  # wall clock, ns
    ack_ns: list[int]  # 0: no ack
    id: list[str]  # "" without ack
    seq: list[int]
    ts: list[int]  # ms, from the ack
    priority: list[str]  # ack's priority, "" without ack
    deliver_ns: list[int]  # first `message` frame seen by this process; 0: none
    error: list[str]  # protocol error code, "timeout" or "disconnected"; "" when acked
    resends: list[int]  # resends after a reconnect (same client_id)


@dataclass(frozen=True, slots=True)
class Record:
    client_id: str
    chat_id: int
    klass: int
    send_ns: int
    ack_ns: int
    id: str
    seq: int
    ts: int
    priority: str
    deliver_ns: int
    error: str
    resends: int

    @property
    def acked(self) -> bool:
        return self.ack_ns > 0 and bool(self.id)

    @property
    def send_ms(self) -> int:
        return self.send_ns // 1_000_000

    @property
    def ack_ms(self) -> int:
        return self.ack_ns // 1_000_000


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RecordChunk)


def _empty() -> RecordChunk:
    return RecordChunk([], [], [], [], [], [], [], [], [], [], [], [])


class RecordWriter:
    """Appends rows and writes a chunk file every :data:`CHUNK_ROWS` rows."""

    def __init__(self, directory: Path, name: str, *, chunk_rows: int = CHUNK_ROWS) -> None:
        self.directory = directory / RECORDS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name = name
        self._chunk_rows = chunk_rows
        self._chunk = _empty()
        self._files = 0
        self.rows = 0

    def add(
        self,
        client_id: str,
        chat_id: int,
        klass: int,
        send_ns: int,
        ack_ns: int = 0,
        message_id: str = "",
        seq: int = 0,
        ts: int = 0,
        priority: str = "",
        deliver_ns: int = 0,
        error: str = "",
        resends: int = 0,
    ) -> None:
        c = self._chunk
        c.client_id.append(client_id)
        c.chat_id.append(chat_id)
        c.klass.append(klass)
        c.send_ns.append(send_ns)
        c.ack_ns.append(ack_ns)
        c.id.append(message_id)
        c.seq.append(seq)
        c.ts.append(ts)
        c.priority.append(priority)
        c.deliver_ns.append(deliver_ns)
        c.error.append(error)
        c.resends.append(resends)
        self.rows += 1
        if len(c.client_id) >= self._chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self._chunk.client_id:
            return
        path = self.directory / f"{self._name}-{self._files:05d}.msgpack"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_encoder.encode(self._chunk))
        tmp.rename(path)  # a reader never sees half a chunk
        self._files += 1
        self._chunk = _empty()


def chunk_files(run_dir: Path) -> list[Path]:
    """The run's chunks; a gathered AWS run has one ``shard-<i>/`` directory per task."""
    own = sorted((run_dir / RECORDS_DIR).glob("*.msgpack"))
    return own + sorted(run_dir.glob(f"shard-*/{RECORDS_DIR}/*.msgpack"))


def read_chunk(path: Path) -> Iterator[Record]:
    c = _decoder.decode(path.read_bytes())
    columns = (
        c.client_id, c.chat_id, c.klass, c.send_ns, c.ack_ns, c.id,
        c.seq, c.ts, c.priority, c.deliver_ns, c.error, c.resends,
    )  # fmt: skip
    for row in zip(*columns, strict=True):
        yield Record(*row)


def iter_records(run_dir: Path) -> Iterator[Record]:
    """Every row of a run directory, chunk by chunk (constant memory)."""
    for path in chunk_files(run_dir):
        yield from read_chunk(path)
