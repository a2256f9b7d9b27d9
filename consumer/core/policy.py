"""Pure decisions and bounds of the loop: when records go to the writer, how long to wait after a failure,
and what a record may carry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """When the loop sends the records it has read to the writer, as one batch.

    As in Nagle's algorithm, with the writer's window of requests as the unacknowledged data: while the
    writer has room (fewer rows pending than requests it keeps in flight), whatever has been read goes at
    once, however little. While it is full, records gather, and the next batch goes when it has room
    again, or when `max_records` records or `max_bytes` bytes are waiting, or when the oldest has waited
    `max_wait_ms`: so batches grow by themselves under load, and the wait is only an upper bound. No
    batch goes while the batches in flight hold more than `max_records` records (so at most about two
    batches' worth is in flight, as memory bounds promise), nor more than `max_in_flight` batches. One
    batch takes at most `max_records` records and `max_bytes` bytes (at least one record).
    """

    max_records: int
    max_wait_ms: int
    max_bytes: int = 32 << 20
    max_in_flight: int = 16

    def send_now(self, now_ms: int, oldest_ms: int | None, buffered: int, buffered_bytes: int,
                 in_flight: int, held: int = 0, pending: int = 0, window: int = 0) -> bool:
        """`held`: records in the batches in flight; `pending`: rows the writer holds without an outcome;
        `window`: the requests it keeps in flight."""
        if buffered == 0 or self._full(in_flight, held):
            return False
        if self._writer_has_room(in_flight, pending, window):
            return True
        if buffered >= self.max_records or buffered_bytes >= self.max_bytes:
            return True
        return oldest_ms is not None and now_ms - oldest_ms >= self.max_wait_ms

    def wait_ms(self, now_ms: int, oldest_ms: int | None, in_flight: int, held: int = 0, pending: int = 0,
                window: int = 0) -> int | None:
        """How long the loop may wait for an outcome before what it holds is due by age (None: no deadline:
        nothing is held, or nothing may be sent before an outcome)."""
        if oldest_ms is None or self._full(in_flight, held):
            return None
        if self._writer_has_room(in_flight, pending, window):
            return 0
        return max(0, oldest_ms + self.max_wait_ms - now_ms)

    def _full(self, in_flight: int, held: int) -> bool:
        """No batch may go before one in flight is done."""
        return in_flight >= self.max_in_flight or (in_flight > 0 and held > self.max_records)

    @staticmethod
    def _writer_has_room(in_flight: int, pending: int, window: int) -> bool:
        return in_flight == 0 or pending < window


@dataclass(frozen=True)
class Backoff:
    """Exponential pause after consecutive transient failures: min, 2*min, ... capped at max."""

    min_ms: int
    max_ms: int

    def delay_ms(self, failures: int) -> int:
        if failures <= 0:
            return 0
        return int(min(self.max_ms, self.min_ms * 2 ** min(failures - 1, 30)))


@dataclass(frozen=True)
class Limits:
    """Bounds on what a record may carry; a record beyond them is dead-lettered with the reason."""

    max_value_bytes: int = 1 << 20  # a string or bytes value (a feature, a list item or a join key)
    max_list_items: int = 10_000
    # Event time may lead the consumer's clock by this much; an event from further in the future would
    # pin its entity until that time, so it is rejected. None: no bound.
    max_future_ms: int | None = 24 * 3600 * 1000
