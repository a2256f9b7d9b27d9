"""Records read from Kafka and not yet in a batch: one queue per partition, taken from fairly.

librdkafka hands over a partition's prefetched records in large runs (a whole fetch of one partition,
then the next), so a loop that takes records in the order they come drains partitions one after
another during a backlog. The intake keeps a queue per partition, bounded by a fair share of its
capacity, and batches take from every partition in turn. A partition whose queue holds its share is
paused in librdkafka (what it prefetched for it is dropped, and fetched again on resume), so the other
partitions' records come through. Pure bookkeeping: the loop applies the pauses.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from consumer.core.records import Message

TP = tuple[str, int]


@dataclass
class Entry:
    message: Message
    size: int  # bytes of key and value
    received: float  # monotonic seconds at which the loop read it


class Intake:
    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._queues: dict[TP, deque[Entry]] = {}
        self._bytes: dict[TP, int] = {}
        self._order: list[TP] = []  # the round-robin order; rotated so each take starts one further on
        self.records = 0
        self.bytes = 0

    def add(self, messages: Iterable[Message], now: float) -> None:
        for message in messages:
            tp = (message.topic() or "", message.partition() or 0)
            queue = self._queues.get(tp)
            if queue is None:
                queue = self._queues[tp] = deque()
                self._bytes[tp] = 0
                self._order.append(tp)
            size = len(message.value() or b"") + len(message.key() or b"")
            queue.append(Entry(message, size, now))
            self._bytes[tp] += size
            self.records += 1
            self.bytes += size

    def oldest(self) -> float | None:
        """When the longest-waiting record was read (None when empty)."""
        heads = [q[0].received for q in self._queues.values() if q]
        return min(heads) if heads else None

    def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        """Up to `max_records` records and `max_bytes` bytes (at least one record), a fair share from every
        partition in turn, each partition's in order."""
        out: list[Entry] = []
        taken_bytes = 0
        active = [tp for tp in self._order if self._queues[tp]]
        if active:
            self._order.append(self._order.pop(self._order.index(active[0])))
        while active and len(out) < max_records:
            per = max(1, (max_records - len(out)) // len(active))
            still: list[TP] = []
            for tp in active:
                queue = self._queues[tp]
                for _ in range(per):
                    if not queue or len(out) >= max_records:
                        break
                    if out and taken_bytes + queue[0].size > max_bytes:
                        return self._taken(out)
                    entry = queue.popleft()
                    self._bytes[tp] -= entry.size
                    taken_bytes += entry.size
                    out.append(entry)
                if queue:
                    still.append(tp)
            active = still
        return self._taken(out)

    def put_back(self, entries: list[Entry]) -> None:
        """Return taken records to the front of their queues, in order (a batch that could not be sent)."""
        for entry in reversed(entries):
            message = entry.message
            tp = (message.topic() or "", message.partition() or 0)
            if tp not in self._queues:
                self._queues[tp] = deque()
                self._bytes[tp] = 0
                self._order.append(tp)
            self._queues[tp].appendleft(entry)
            self._bytes[tp] += entry.size
            self.records += 1
            self.bytes += entry.size

    def _taken(self, out: list[Entry]) -> list[Entry]:
        self.records -= len(out)
        self.bytes -= sum(e.size for e in out)
        return out

    def share(self, partitions: int) -> tuple[int, int]:
        """One partition's fair share of the intake: (records, bytes)."""
        n = max(1, partitions)
        return max(1, -(-self.max_records // n)), max(1, -(-self.max_bytes // n))

    def full(self, partitions: Iterable[TP], assigned: int) -> set[TP]:
        """Of `partitions`, those holding their share: pause them."""
        records, size = self.share(assigned)
        return {tp for tp in partitions if len(self._queues.get(tp, ())) >= records or self._bytes.get(tp, 0) >= size}

    def drained(self, partitions: Iterable[TP], assigned: int) -> set[TP]:
        """Of `partitions` (paused for being full), those down to half their share: resume them."""
        records, size = self.share(assigned)
        return {tp for tp in partitions
                if len(self._queues.get(tp, ())) <= records // 2 and self._bytes.get(tp, 0) <= size // 2}

    def drop(self, partitions: Iterable[TP]) -> int:
        """Forget the records of `partitions` (revoked or lost); returns how many."""
        dropped = 0
        for tp in partitions:
            queue = self._queues.pop(tp, None)
            if queue is None:
                continue
            self._order.remove(tp)
            dropped += len(queue)
            self.records -= len(queue)
            self.bytes -= self._bytes.pop(tp)
        return dropped

    def partitions(self) -> set[TP]:
        return {tp for tp, q in self._queues.items() if q}

    def __len__(self) -> int:
        return self.records
