"""Which partitions the loop keeps paused in librdkafka, and why: pure bookkeeping.

A partition whose queue in the intake holds its share is paused (backpressure, not a sleep) until it is
down to half of it; while something fails, every assigned partition is paused.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.intake import Intake

TP = tuple[str, int]


class Pauses:
    def __init__(self) -> None:
        self.paused: set[TP] = set()  # as the source has them
        self._full: set[TP] = set()  # of those, paused for holding their share of the intake

    def update(self, assigned: set[TP], intake: Intake, failing: bool) -> tuple[set[TP], set[TP]]:
        """The partitions to pause and to resume now."""
        owned = len(assigned)
        self._full = (self._full & assigned) - intake.drained(self._full, owned)
        self._full |= intake.full(assigned - self._full, owned)
        wanted = set(assigned) if failing else set(self._full)
        pause, resume = wanted - self.paused, (self.paused - wanted) & assigned
        self.paused = wanted
        return pause, resume

    def let_go(self, partitions: Iterable[TP]) -> set[TP]:
        """Forget partitions that go elsewhere; returns those of them that are paused (to resume first)."""
        gone = set(partitions)
        paused = self.paused & gone
        self.paused -= gone
        self._full -= gone
        return paused
