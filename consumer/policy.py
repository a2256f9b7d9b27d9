"""Pure decisions of the loop: when a micro-batch is complete, and how long to wait after a failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """A batch closes when it holds `max_records` messages or its oldest message waited `max_wait_ms`."""

    max_records: int
    max_wait_ms: int

    def room(self, buffered: int) -> int:
        """How many more messages the batch may take."""
        return max(0, self.max_records - buffered)

    def should_flush(self, now_ms: int, oldest_ms: int | None, buffered: int) -> bool:
        if buffered >= self.max_records:
            return True
        return buffered > 0 and oldest_ms is not None and now_ms - oldest_ms >= self.max_wait_ms

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
