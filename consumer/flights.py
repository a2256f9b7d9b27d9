"""The batches in flight: sent to the writer and the dead-letter topic, and not done yet.

A batch is done when every view's rows have an outcome and every dead letter of it (a record that could
not be decoded or mapped, or a row Cassandra refused) is acknowledged by Kafka. Then its offsets are
done, and the ledger says how far each partition may be committed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from consumer.core.errors import WriteRefused
from consumer.core.ledger import OffsetLedger
from consumer.core.records import Rejected, source_of
from consumer.core.store import WriteReport
from consumer.decode.assemble import Batch
from consumer.decode.coalesce import ViewBatch

TP = tuple[str, int]


@dataclass(eq=False)
class Flight:
    ticket: int
    batch: Batch
    received: list[float]  # per position in the batch: when the loop read the record (monotonic)
    views_left: int
    letters_left: int
    jobs: list[int] = field(default_factory=list)  # the writer's submissions, to abandon
    unsent_letters: list[Rejected] = field(default_factory=list)  # refused by the dead-letter topic

    @property
    def done(self) -> bool:
        return not (self.views_left or self.letters_left)


class Flights:
    def __init__(self) -> None:
        self.batches: dict[int, Flight] = {}
        self.ledger = OffsetLedger()
        self._tickets = itertools.count(1)
        self.records = 0

    def open(self, batch: Batch, received: list[float], owned: set[TP]) -> Flight:
        flight = Flight(next(self._tickets), batch, received, len(batch.views), len(batch.rejected))
        self.batches[flight.ticket] = flight
        self.ledger.open(flight.ticket, {tp: o for tp, o in batch.next_offsets.items() if tp in owned})
        self.records += batch.size
        return flight

    def get(self, ticket: int) -> Flight | None:
        return self.batches.get(ticket)

    def written(self, flight: Flight, view_batch: ViewBatch,
                report: WriteReport) -> tuple[list[float], list[Rejected]]:
        """One view's rows have their outcomes: the record waits (see `Events.view_written`), and the
        rows Cassandra refused, as dead letters to send."""
        messages = flight.batch.messages
        waits = [sent - flight.received[int(view_batch.positions[row])]
                 for row, sent in enumerate(report.sent_at) if sent is not None]
        refused = []
        for row, reason in report.failures.items():
            message = messages[int(view_batch.positions[row])]
            refused.append(Rejected(message, WriteRefused(reason).at(source_of(message))))
        flight.views_left -= 1
        flight.letters_left += len(refused)
        return waits, refused

    def close_if_done(self, flight: Flight) -> bool:
        if not flight.done or flight.ticket not in self.batches:
            return False
        del self.batches[flight.ticket]
        self.ledger.close(flight.ticket)
        self.records -= flight.batch.size
        return True

    def any_unsent_letters(self) -> bool:
        return any(f.unsent_letters for f in self.batches.values())

    def touching(self, partitions: Iterable[TP]) -> bool:
        """Whether a batch not done has records of these partitions."""
        return bool(self.ledger.open_tickets(partitions))

    def forget(self, partitions: set[TP]) -> list[int]:
        """The partitions went elsewhere: nothing more is committed for them, and batches all of whose
        records were theirs are dropped. Returns the writer's submissions of those, to abandon."""
        self.ledger.forget(partitions)
        gone = [f for f in self.batches.values() if all(tp in partitions for tp in f.batch.next_offsets)]
        for flight in gone:
            del self.batches[flight.ticket]
            self.ledger.close(flight.ticket)
            self.records -= flight.batch.size
        return [job for f in gone for job in f.jobs]

    def jobs(self) -> list[int]:
        return [job for f in self.batches.values() for job in f.jobs]

    def __len__(self) -> int:
        return len(self.batches)
