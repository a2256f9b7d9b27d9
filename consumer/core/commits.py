"""Which done offsets to commit, and when: pure state, with the clock passed in.

Offsets come in as batches finish (from the ledger) and are committed at most every `interval_s`
(asynchronously), in flight or idle: a slow stream finishes a batch of a record or two every few
milliseconds, and a commit for each cost the broker more CPU than the stream itself (an OffsetCommit
100 times a second at 200 records/s). An asynchronous commit
that failed (a rebalance making the generation stale, say) is not covered by a later one when its
partition goes idle, so it is sent again, at most every `recommit_interval_s`, while the partition is
owned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass
class Commits:
    interval_s: float = 0.1
    recommit_interval_s: float = 1.0
    pending: dict[TP, int] = field(default_factory=dict)  # done, not yet committed
    sent: dict[TP, int] = field(default_factory=dict)  # the latest offsets committed, per owned partition
    _failed: set[TP] = field(default_factory=set)
    _last_at: float = float("-inf")
    _recommit_at: float = 0.0

    def add(self, offsets: Mapping[TP, int]) -> None:
        self.pending.update(offsets)

    def due(self, now: float) -> dict[TP, int]:
        """The offsets to commit now (they count as sent), or nothing."""
        if self._failed and now >= self._recommit_at:
            self.pending = {**{tp: self.sent[tp] for tp in self._failed if tp in self.sent}, **self.pending}
            self._failed.clear()
            self._recommit_at = now + self.recommit_interval_s
        if not self.pending or now < self._last_at + self.interval_s:
            return {}
        offsets, self.pending = self.pending, {}
        self._last_at = now
        self.sent.update(offsets)
        return offsets

    def due_at(self) -> float | None:
        """When what is pending may be committed (None: nothing is pending)."""
        return self._last_at + self.interval_s if self.pending else None

    def everything(self, partitions: Iterable[TP] | None = None) -> dict[TP, int]:
        """All that is done (of `partitions`), for a final synchronous commit."""
        merged = {**self.sent, **self.pending}
        if partitions is not None:
            wanted = set(partitions)
            merged = {tp: o for tp, o in merged.items() if tp in wanted}
        self.sent.update(merged)
        for tp in merged:
            self.pending.pop(tp, None)
        return merged

    def failed(self, partitions: Iterable[TP]) -> None:
        self._failed.update(partitions)

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self.sent.pop(tp, None)
            self._failed.discard(tp)
