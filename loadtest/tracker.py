"""In-flight sends of one generator process: pending acks, awaited deliveries, the
per-second counters and the records.

One :class:`Tracker` per process (bulk worker or the probes), single-threaded on the
event loop. A send moves ``pending`` (no ack yet) -> ``awaiting`` (acked, its own
``message`` frame not yet back) -> a record row. Rows whose ack or delivery never comes
are written after ``ack_timeout_s`` / ``deliver_timeout_s`` by :meth:`sweep`, so memory
is bounded by what is in flight, not by the run's length.

End-to-end latency is measured where the sender sees its own message come back from the
fan-out (the sender is a member of the chat, and its copy takes the same path as every
other member's: enqueue, worker or priority, MongoDB, ZeroMQ, gateway). Copies received
by the other members are decoded and ignored, so one message is measured once.

Hot-path cost per message: two dict operations, one list, two array appends.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from loadtest import histograms
from loadtest.records import RecordWriter

# In-flight row: a list (mutable, cheaper than an object) indexed by these constants.
CID, CHAT, SEND_NS, ACK_NS, MID, SEQ, TS, PRIO, RESENDS, FRAME, CONN = range(11)


class Tracker:
    def __init__(
        self,
        writer: RecordWriter,
        klass: int,
        *,
        ack_timeout_s: float = 30.0,
        deliver_timeout_s: float = 30.0,
    ) -> None:
        self.writer = writer
        self.klass = klass
        self.ack_timeout_ns = int(ack_timeout_s * 1e9)
        self.deliver_timeout_ns = int(deliver_timeout_s * 1e9)
        self.pending: dict[str, list[Any]] = {}
        self.awaiting: dict[str, list[Any]] = {}
        # Own message frames that overtook their ack (rare; bounded by the sweep).
        self.early: dict[str, int] = {}
        self._reset_second()
        self.totals: Counter[str] = Counter()

    def _reset_second(self) -> None:
        self.sent = 0
        self.acked = 0
        self.delivered = 0
        self.errors: Counter[str] = Counter()
        self.ack_lat = histograms.LatencyBatch()
        self.e2e_lat = histograms.LatencyBatch()

    # ------------------------------------------------------------------ events

    def on_send(self, cid: str, chat_id: int, frame: str, conn: Any, now_ns: int) -> list[Any]:
        row = [cid, chat_id, now_ns, 0, "", 0, 0, "", 0, frame, conn]
        self.pending[cid] = row
        self.sent += 1
        return row

    def on_ack(self, cid: str | None, mid: str, seq: int, ts: int, prio: str, now_ns: int) -> None:
        row = self.pending.pop(cid, None) if cid is not None else None
        if row is None:  # a resend's second ack, or one after its timeout: already counted
            return
        row[ACK_NS], row[MID], row[SEQ], row[TS], row[PRIO] = now_ns, mid, seq, ts, prio
        self.acked += 1
        self.ack_lat.add((now_ns - row[SEND_NS]) // 1000)
        early = self.early.pop(mid, 0)
        if early:
            self._deliver(row, early)
        else:
            self.awaiting[mid] = row

    def on_error(self, cid: str | None, code: str, now_ns: int) -> None:
        self.errors[code] += 1
        row = self.pending.pop(cid, None) if cid is not None else None
        if row is not None:
            self._write(row, error=code)

    def on_own_message(self, mid: str, now_ns: int) -> None:
        """The sender's own ``message`` frame came back."""
        row = self.awaiting.pop(mid, None)
        if row is None:
            self.early[mid] = now_ns
        else:
            self._deliver(row, now_ns)

    def on_not_sent(self, cid: str, chat_id: int, code: str, now_ns: int) -> None:
        """A scheduled send that could not go out (connection down, generator overload)."""
        self.sent += 1
        self.errors[code] += 1
        self.writer.add(cid, chat_id, self.klass, now_ns, error=code)

    def _deliver(self, row: list[Any], now_ns: int) -> None:
        self.delivered += 1
        self.e2e_lat.add((now_ns - row[SEND_NS]) // 1000)
        self._write(row, deliver_ns=now_ns)

    def _write(self, row: list[Any], *, deliver_ns: int = 0, error: str = "") -> None:
        self.writer.add(
            row[CID], row[CHAT], self.klass, row[SEND_NS], row[ACK_NS], row[MID],
            row[SEQ], row[TS], row[PRIO], deliver_ns, error, row[RESENDS],
        )  # fmt: skip

    # ------------------------------------------------------------------ housekeeping

    def sweep(self, now_ns: int) -> None:
        """Write out sends whose ack or delivery is overdue (dicts are in time order)."""
        cutoff = now_ns - self.ack_timeout_ns
        expired = []
        for cid, row in self.pending.items():
            if row[SEND_NS] > cutoff:
                break
            expired.append(cid)
        for cid in expired:
            self.errors["timeout"] += 1
            self._write(self.pending.pop(cid), error="timeout")
        cutoff = now_ns - self.deliver_timeout_ns
        overdue = []
        for mid, row in self.awaiting.items():
            if row[ACK_NS] > cutoff:
                break
            overdue.append(mid)
        for mid in overdue:
            self._write(self.awaiting.pop(mid))
        if len(self.early) > 10_000:
            self.early.clear()

    def pending_on(self, conn: Any) -> list[list[Any]]:
        return [row for row in self.pending.values() if row[CONN] is conn]

    @property
    def inflight(self) -> int:
        return len(self.pending)

    def take_second(self) -> dict[str, Any]:
        """The counters since the last call, with encoded latency histograms."""
        ack, e2e = histograms.new_histogram(), histograms.new_histogram()
        self.ack_lat.drain_into(ack)
        self.e2e_lat.drain_into(e2e)
        out = {
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "errors": dict(self.errors),
            "ack": histograms.encode(ack),
            "e2e": histograms.encode(e2e),
            "inflight": len(self.pending),
        }
        self.totals.update(sent=self.sent, acked=self.acked, delivered=self.delivered)
        self.totals.update({f"error:{k}": v for k, v in self.errors.items()})
        self._reset_second()
        return out

    def finish(self) -> None:
        """Write every row still in flight (end of the drain) and flush the writer."""
        for row in self.pending.values():
            self.errors["timeout"] += 1
            self._write(row, error="timeout")
        self.pending.clear()
        for row in self.awaiting.values():
            self._write(row)
        self.awaiting.clear()
        self.writer.flush()


def now_ns() -> int:
    return time.time_ns()
