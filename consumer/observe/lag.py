"""The lag collector: asks the brokers for the log end offsets of the assigned partitions.

It runs in a thread of its own, every `metrics.lag_interval_s`, through an `OffsetReader` (its own
consumer handle, which never joins the group): nothing it waits for holds up the loop, and nothing the
loop or Cassandra waits for holds up the lag figures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Literal, Protocol

from consumer.kafka.source import TP
from consumer.observe.metrics import Metrics

log = logging.getLogger(__name__)


class Offsets(Protocol):
    def log_ends(self, partitions: Iterable[TP], timeout_s: float = ...) -> dict[TP, int]: ...
    def start_offsets(self, partitions: Iterable[TP], reset: Literal["earliest", "latest"],
                      timeout_s: float = ...) -> dict[TP, int]: ...
    def close(self) -> None: ...


class LagCollector(threading.Thread):
    """Every `interval_s`, and at once when the assignment changes: where the group stands for newly
    assigned partitions, and the log end offset of every assigned partition."""

    def __init__(self, metrics: Metrics, offsets: Offsets, reset: Literal["earliest", "latest"],
                 interval_s: float) -> None:
        super().__init__(name="lag-collector", daemon=True)
        self.metrics = metrics
        self._offsets = offsets
        self._reset: Literal["earliest", "latest"] = reset
        self.interval_s = interval_s
        self._stopping = False

    def run(self) -> None:
        try:
            while not self._stopping:
                self.collect()
                self.metrics.assignment_changed.wait(self.interval_s)
                self.metrics.assignment_changed.clear()
        finally:
            self._offsets.close()

    def collect(self) -> None:
        snapshot = self.metrics.snapshot()
        try:
            unknown = [tp for tp, (committed, _) in snapshot.items() if committed is None]
            if unknown:
                self.metrics.seed_committed(self._offsets.start_offsets(unknown, self._reset))
            if snapshot:
                self.metrics.update_log_end(self._offsets.log_ends(snapshot))
        except Exception as exc:  # noqa: BLE001 - a failed collection leaves the last figures; it is retried
            log.warning("lag collection failed: %s", exc)
        self.metrics.refresh()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stopping = True
        self.metrics.assignment_changed.set()
        if self.ident is None:  # never started: nothing runs the clean-up
            self._offsets.close()
        elif self.is_alive():
            self.join(timeout_s)
