"""Pure decisions and bounds of the loop: when a micro-batch is complete, how long to wait after a failure,
and what a record may carry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """A batch closes when it holds `max_records` messages or `max_bytes` of them (keys and values), or
    when its oldest message waited `max_wait_ms`.

    The byte bound keeps memory bounded for large records: a poll can bring more than the bytes left
    (one poll's worth at most), and the batch then takes only what fits.
    """

    max_records: int
    max_wait_ms: int
    max_bytes: int = 32 << 20

    def room(self, buffered: int, buffered_bytes: int = 0) -> int:
        """How many more messages the batch may take."""
        if buffered_bytes >= self.max_bytes:
            return 0
        return max(0, self.max_records - buffered)

    def should_flush(self, now_ms: int, oldest_ms: int | None, buffered: int, buffered_bytes: int = 0) -> bool:
        if buffered >= self.max_records or buffered_bytes >= self.max_bytes:
            return True
        return buffered > 0 and oldest_ms is not None and now_ms - oldest_ms >= self.max_wait_ms

    def batch_length(self, sizes: Sequence[int]) -> int:
        """How many of the buffered messages (their sizes, in order) the next batch takes: at most
        `max_records`, and no more bytes than `max_bytes` unless a single message is larger."""
        total = 0
        for n, size in enumerate(sizes[: self.max_records]):
            total += size
            if total > self.max_bytes:
                return max(1, n)
        return min(len(sizes), self.max_records)

    def poll_timeout_ms(self, now_ms: int, oldest_ms: int | None) -> int:
        """How long the next poll may block without keeping a batch past its deadline."""
        if oldest_ms is None:
            return self.max_wait_ms
        return max(0, min(self.max_wait_ms, oldest_ms + self.max_wait_ms - now_ms))


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
