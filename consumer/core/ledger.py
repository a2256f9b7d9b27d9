"""Which offsets are done, per partition, when work finishes out of order.

A batch takes a contiguous run of each partition's offsets (the loop reads a partition in order and
cuts batches from the front of its queue). Batches finish in any order; a partition's committable
offset only advances over the prefix of its runs whose batches are all done: written, found stale, or
dead-lettered and acknowledged. A pure data structure: no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass
class _Run:
    ticket: int
    end: int  # the offset after the run's last record


@dataclass
class OffsetLedger:
    _runs: dict[TP, deque[_Run]] = field(default_factory=dict)
    _open: dict[int, set[TP]] = field(default_factory=dict)  # ticket -> partitions it has runs in
    _unreleased: dict[int, int] = field(default_factory=dict)  # done ticket -> its runs not yet released
    # Per partition: the offset after the last run released (what may be committed), until it is taken.
    _advanced: dict[TP, int] = field(default_factory=dict)

    def open(self, ticket: int, next_offsets: Mapping[TP, int]) -> None:
        """A batch is submitted: per partition, the offset after its last record in the batch."""
        for tp, end in next_offsets.items():
            self._runs.setdefault(tp, deque()).append(_Run(ticket, end))
        self._open[ticket] = set(next_offsets)

    def close(self, ticket: int) -> None:
        """The batch is done (whatever became of each of its records)."""
        partitions = self._open.pop(ticket, None)
        if partitions is None:
            return
        self._unreleased[ticket] = len(partitions)
        for tp in partitions:
            runs = self._runs[tp]
            while runs and runs[0].ticket in self._unreleased:
                run = runs.popleft()
                self._advanced[tp] = run.end
                self._release(run.ticket)

    def _release(self, ticket: int) -> None:
        self._unreleased[ticket] -= 1
        if not self._unreleased[ticket]:
            del self._unreleased[ticket]

    def is_open(self, ticket: int) -> bool:
        return ticket in self._open

    def open_tickets(self, partitions: Iterable[TP] | None = None) -> set[int]:
        """Tickets not yet done (those with runs in `partitions`, when given)."""
        if partitions is None:
            return set(self._open)
        wanted = set(partitions)
        return {t for t, tps in self._open.items() if tps & wanted}

    def take_committable(self, partitions: Iterable[TP] | None = None) -> dict[TP, int]:
        """Offsets that advanced since last taken (of `partitions`, when given): the next offsets to commit."""
        if partitions is None:
            out, self._advanced = self._advanced, {}
            return out
        return {tp: self._advanced.pop(tp) for tp in list(partitions) if tp in self._advanced}

    def forget(self, partitions: Iterable[TP]) -> None:
        """The partitions went to another member: nothing more is committed for them."""
        for tp in partitions:
            for run in self._runs.pop(tp, deque()):
                if run.ticket in self._unreleased:
                    self._release(run.ticket)
                elif run.ticket in self._open:
                    self._open[run.ticket].discard(tp)
            self._advanced.pop(tp, None)

    @property
    def open_batches(self) -> int:
        return len(self._open)
