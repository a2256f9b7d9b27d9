"""What the loop reports as it goes: the metrics listen, and so can a benchmark's probe."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.core.errors import TransientError
from consumer.core.records import Message, Rejected
from consumer.core.store import WriteReport
from consumer.decode.assemble import Batch
from consumer.decode.coalesce import ViewBatch
from consumer.kafka.source import TP


class Events:
    """What the loop reports as it goes; the metrics module listens. The base class ignores everything."""

    def loop_turned(self, now: float) -> None: ...
    def received(self, messages: Sequence[Message]) -> None: ...
    def batch_assembled(self, batch: Batch) -> None: ...
    def view_written(self, view_batch: ViewBatch, report: WriteReport, waits: list[float]) -> None:
        """A view's rows of a batch have their outcomes (`report.done_at`: when, per row); `waits`: for each
        row that needed a request, seconds from the loop reading its record to that request being sent."""
    def dead_lettered(self, rejected: list[Rejected]) -> None: ...
    def committed(self, offsets: Mapping[TP, int], now: float) -> None: ...
    def assigned(self, partitions: list[TP]) -> None: ...
    def revoked(self, partitions: list[TP], lost: bool) -> None: ...
    def paused(self, partitions: set[TP], paused: bool) -> None: ...
    def failed(self, error: TransientError) -> None: ...
    def in_flight(self, records: int) -> None:
        """Records sent to the writer (or the dead-letter topic) and not done yet."""


class EventFanout(Events):
    """Reports every event to several listeners, in order."""

    def __init__(self, listeners: list[Events]) -> None:
        self.listeners = listeners


def _fan_out(name: str) -> Callable[..., None]:
    def report(self: EventFanout, *args: Any, **kwargs: Any) -> None:
        for listener in self.listeners:
            getattr(listener, name)(*args, **kwargs)

    report.__name__ = name
    return report


for _name in [n for n in vars(Events) if not n.startswith("_")]:
    setattr(EventFanout, _name, _fan_out(_name))
