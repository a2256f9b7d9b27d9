"""The consumer loop: read -> batch -> decode -> guarded write -> done -> commit, with writes in flight
while it reads and decodes on. One record's way, in one direction:

    KafkaSource.poll -> Intake            a queue per partition; a partition holding its share is paused
        -> BatchPolicy.send_now           at once while the writer has room; gathered while it is full
        -> assemble                       decode, map, coalesce, encode; bad records become `Rejected`
        -> Store.submit                   guarded writes on the writer's threads, one outcome per row
           DeadLetters.send               rejected records (and rows Cassandra refused), acknowledged by Kafka
        -> OffsetLedger                   a batch is done when all its rows and dead letters are
        -> KafkaSource.commit             per partition, the prefix of offsets whose batches are all done

Batches finish in any order; a partition's commit never passes a batch that is not done. The writer
keeps one write per entity in flight, so within a partition the later record still wins a full tie.

A transient failure (Cassandra, the dead-letter topic, the registry) pauses every partition until it
is over: the writer retries its writes itself, dead letters are sent again after a backoff, a batch
that could not be decoded for want of its schema is tried again after a backoff. Nothing past the
failed work is committed meanwhile, and the loop keeps turning (`/healthz`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from consumer.core.commits import Commits
from consumer.core.errors import DeadLetterUnavailable, TransientError
from consumer.core.outcomes import drain
from consumer.core.policy import Backoff, BatchPolicy, Limits
from consumer.core.records import Message, Rejected
from consumer.core.store import Store, WriteReport
from consumer.core.troubles import Troubles
from consumer.decode.assemble import assemble
from consumer.decode.coalesce import ViewBatch
from consumer.decode.decoder import TopicDecoder
from consumer.events import Events
from consumer.flights import Flight, Flights
from consumer.intake import Intake
from consumer.kafka.source import TP, RebalanceListener
from consumer.pauses import Pauses
from consumer.ports import Clock, DeadLetters, Source

log = logging.getLogger(__name__)

# A poll blocks in C, where Python signal handlers cannot run: short waits keep SIGTERM prompt.
MAX_WAIT_S = 0.1
# With batches in flight and nothing read, how long a poll may wait before their outcomes are looked at.
BUSY_WAIT_S = 0.02
COMMIT_INTERVAL_S = 0.1
RECOMMIT_INTERVAL_S = 1.0


class Pipeline(RebalanceListener):
    def __init__(
        self,
        decoders: Mapping[str, TopicDecoder],
        store: Store,
        dead_letters: DeadLetters,
        source_factory: Callable[[RebalanceListener], Source],
        limits: Limits,
        policy: BatchPolicy,
        backoff: Backoff,
        drain_timeout_s: float,
        events: Events | None = None,
        clock: Clock | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.decoders = decoders
        self.store = store
        self.dead_letters = dead_letters
        self.limits = limits
        self.policy = policy
        self.drain_timeout_s = drain_timeout_s
        self.events = events or Events()
        self.clock = clock or Clock()
        self.intake = Intake(policy.max_records, policy.max_bytes)
        self.flights = Flights()
        self.assigned: set[TP] = set()
        self.pauses = Pauses()
        # What is failing now ("store", "dead letters", "registry"), and when the loop retries its own.
        self.troubles = Troubles(backoff)
        self.commits = Commits(COMMIT_INTERVAL_S, RECOMMIT_INTERVAL_S)
        self._answers: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._draining = False
        self._stop = stop or threading.Event()
        answers = self._answers
        store.watch(lambda error: answers.put(("health", error)))
        store.on_room(lambda: answers.put(("room",)))
        self.source = source_factory(self)

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Consume until `stop()`; then drain, commit and leave the group."""
        self.source.subscribe()
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException:
            self.store.abandon(self.flights.jobs())
            self.source.close()  # leave the group without committing anything more
            raise
        self.shutdown()

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stop.set()

    def step(self) -> None:
        """One turn: take in what is done, send what is due, then read (waiting only when nothing is due)."""
        now = self.clock.monotonic()
        self.events.loop_turned(self.clock.wall())
        self._settle(now)
        if self.troubles.retry_due(now):
            self._retry()
        if self._due(now):
            self._send()
            self._accept(self.source.poll(self._room(), 0))
            return
        wait = self._wait_s(now)
        if self.intake or self.troubles:
            # Records are held (for a batch in flight, or a failure): what can end the wait is an outcome.
            self._settle(now, wait)
            wait = 0.0
        self._accept(self.source.poll(self._room(), wait))

    def _due(self, now: float) -> bool:
        if self.troubles or not self.intake:
            return False
        oldest = self.intake.oldest()
        return self.policy.send_now(int(now * 1000), None if oldest is None else int(oldest * 1000),
                                    self.intake.records, self.intake.bytes, len(self.flights), *self._writer_load())

    def _writer_load(self) -> tuple[int, int, int]:
        """Records in flight, rows the writer holds without an outcome, its window (full: it tells of room)."""
        return (self.flights.records, self.store.pending(), self.store.window) if self.flights else (0, 0, 0)

    def _wait_s(self, now: float) -> float:
        commit_at = self.commits.due_at()
        waits = [BUSY_WAIT_S if self.flights else MAX_WAIT_S, MAX_WAIT_S if commit_at is None else commit_at - now]
        if self.troubles:
            waits.append(max(0.0, self.troubles.retry_at - now))
        oldest = self.intake.oldest()
        if oldest is not None and not self.troubles:
            wait_ms = self.policy.wait_ms(int(now * 1000), int(oldest * 1000), len(self.flights), *self._writer_load())
            if wait_ms is not None:
                waits.append(wait_ms / 1000)
        return max(0.0, min(waits))

    def _room(self) -> int:
        return max(1, self.intake.max_records - self.intake.records)

    def _accept(self, messages: Sequence[Message]) -> None:
        if messages:
            self.intake.add(messages, self.clock.monotonic())
            self.events.received(messages)
        self._update_pauses()

    # ------------------------------------------------------------------ sending

    def _send(self) -> None:
        """Take the next batch from the intake, decode it, and hand it to the writer and the dead letters."""
        entries = self.intake.take(self.policy.max_records, self.policy.max_bytes)
        try:
            batch = assemble([e.message for e in entries], self.decoders, self.limits, int(self.clock.wall() * 1000))
        except TransientError as exc:  # the registry: the records wait, in order, and are tried again
            self.intake.put_back(entries)
            self._trouble("registry", exc)
            return
        self._recovered("registry")
        flight = self.flights.open(batch, [e.received for e in entries], self.assigned)
        self.events.batch_assembled(batch)
        for view_batch in batch.views:
            done = self._written_to(flight.ticket, view_batch)
            flight.jobs.append(self.store.submit(view_batch.view, view_batch.rows, done))
        self._send_letters(flight, batch.rejected)
        self.events.in_flight(self.flights.records)
        self._finish_if_done(flight)

    def _written_to(self, ticket: int, view_batch: ViewBatch) -> Callable[[WriteReport], None]:
        """The writer's callback (on its thread): the report goes to the loop's queue of outcomes."""
        answers = self._answers
        return lambda report: answers.put(("written", ticket, view_batch, report))

    def _send_letters(self, flight: Flight, rejected: list[Rejected]) -> None:
        if rejected:
            ticket, answers = flight.ticket, self._answers
            self.dead_letters.send(rejected, lambda item, error: answers.put(("delivered", ticket, item, error)))

    # ------------------------------------------------------------------ outcomes

    def _settle(self, now: float, wait_s: float = 0.0) -> None:
        """Take in every outcome that has arrived (waiting up to `wait_s` for the first), then commit."""
        self.dead_letters.poll()
        first = self.clock.wait_on(self._answers, wait_s) if wait_s > 0 else None
        for answer in drain(self._answers, first):
            getattr(self, "_on_" + answer[0])(*answer[1:])
        self._commit_done(self.clock.monotonic())

    def _on_written(self, ticket: int, view_batch: ViewBatch, report: WriteReport) -> None:
        if report.error is not None:
            raise report.error  # no write can succeed (a missing table, refused credentials): stop
        flight = self.flights.get(ticket)
        if flight is None:
            return
        waits, refused = self.flights.written(flight, view_batch, report)
        self.events.view_written(view_batch, report, waits)
        self._send_letters(flight, refused)
        self._finish_if_done(flight)

    def _on_delivered(self, ticket: int, item: Rejected, error: DeadLetterUnavailable | None) -> None:
        if error is None:  # on the topic: counted even when its partition was lost meanwhile (it is sent again)
            self.events.dead_lettered([item])
        flight = self.flights.get(ticket)
        if flight is None:
            return
        if error is not None:
            flight.unsent_letters.append(item)
            self._trouble("dead letters", error)
            return
        flight.letters_left -= 1
        if not self.flights.any_unsent_letters():
            self._recovered("dead letters")
        self._finish_if_done(flight)

    def _on_room(self) -> None:
        """The writer has room again: the next turn sends what waits (nothing else to do here)."""

    def _on_health(self, error: TransientError | None) -> None:
        if error is None:
            self._recovered("store")
        else:
            self._trouble("store", error)

    def _finish_if_done(self, flight: Flight) -> None:
        if self.flights.close_if_done(flight):
            self.events.in_flight(self.flights.records)

    # ------------------------------------------------------------------ failures and pauses

    def _trouble(self, what: str, error: TransientError) -> None:
        """Something failed: pause every partition; the loop's own retries back off (one step per attempt)."""
        delay_ms = self.troubles.fail(what, error, self.clock.monotonic())
        if delay_ms is None:
            return
        if what == "store":  # the writer retries its writes itself (and says so)
            log.warning("Cassandra failing (%s); partitions paused until writes succeed again", error)
        else:
            log.warning("%s failing (%s); retrying in %d ms, partitions paused", what, error, delay_ms)
        self.events.failed(error)
        self._update_pauses()

    def _recovered(self, what: str) -> None:
        if self.troubles.recover(what):
            log.info("%s answers again; partitions resumed", what)
            self._update_pauses()

    def _retry(self) -> None:
        """Send again what failed for a reason the loop retries itself (the writer retries its own)."""
        if "dead letters" in self.troubles:
            for flight in list(self.flights.batches.values()):
                unsent, flight.unsent_letters = flight.unsent_letters, []
                self._send_letters(flight, unsent)
        if "registry" in self.troubles and self.intake:
            self._send()

    def _update_pauses(self) -> None:
        pause, resume = self.pauses.update(self.assigned, self.intake, bool(self.troubles))
        if pause:
            self.source.pause(pause)
            self.events.paused(pause, True)
        self._resume(resume)

    def _resume(self, partitions: set[TP]) -> None:
        if partitions:
            self.source.resume(partitions)
            self.events.paused(partitions, False)

    # ------------------------------------------------------------------ commits

    def _commit_done(self, now: float) -> None:
        self.commits.add(self.flights.ledger.take_committable())
        self._commit(self.commits.due(now), asynchronous=True)

    def _commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None:
        owned = {tp: o for tp, o in offsets.items() if tp in self.assigned}
        if not owned:
            return
        self.source.commit(owned, asynchronous=asynchronous)
        self.events.committed(owned, self.clock.wall())

    def on_commit_failed(self, partitions: list[TP], reason: str) -> None:
        owned = [tp for tp in partitions if tp in self.assigned]
        if owned:
            log.warning("asynchronous commit failed for %s (%s); sending it again", sorted(owned), reason)
            self.commits.failed(owned)

    # ------------------------------------------------------------------ rebalances (called inside poll)

    def on_assign(self, partitions: list[TP]) -> None:
        self.assigned.update(partitions)
        log.info("assigned %s", sorted(partitions))
        self.events.assigned(partitions)
        self._update_pauses()  # while something fails, new partitions are paused at once

    def on_revoke(self, partitions: list[TP]) -> None:
        """Finish the revoked partitions' work (within the drain timeout), commit what is done, and let go."""
        revoked = set(partitions)
        deadline = self.clock.monotonic() + self.drain_timeout_s
        if not self._draining:
            while not self.troubles and revoked & self.intake.partitions():
                self._send()
            self._wait_for(lambda: not self.flights.touching(revoked), deadline)
        self.commits.add(self.flights.ledger.take_committable())
        try:
            self._commit(self.commits.everything(revoked), asynchronous=False)
        except TransientError as exc:
            log.warning("final commit for revoked partitions failed (%s); the next owner may read some records "
                        "again", exc)
        self._let_go(revoked)
        log.info("revoked %s", sorted(revoked))
        self.events.revoked(partitions, lost=False)

    def on_lost(self, partitions: list[TP]) -> None:
        """The partitions already belong to someone else: drop their work, commit nothing for them."""
        self._let_go(set(partitions))
        log.warning("lost %s", sorted(partitions))
        self.events.revoked(partitions, lost=True)

    def _let_go(self, partitions: set[TP]) -> None:
        # Resumed while still assigned, for a later assignment to this process (unless it is leaving).
        paused = self.pauses.let_go(partitions)
        if not self._draining:
            self._resume(paused)
        self.intake.drop(partitions)
        # Batches all of whose records were in these partitions: their writes are of no use to anyone now.
        self.store.abandon(self.flights.forget(partitions))
        self.assigned -= partitions
        self.commits.forget(partitions)
        if not self.intake:
            self._recovered("registry")
        if not self.flights.any_unsent_letters():
            self._recovered("dead letters")
        self._update_pauses()

    def _wait_for(self, condition: Callable[[], bool], deadline: float) -> bool:
        while not condition():
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            self._settle(self.clock.monotonic(), min(left, MAX_WAIT_S))
            if self.troubles.retry_due(self.clock.monotonic()):
                self._retry()
        return True

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Drain within the configured time, commit synchronously, leave the group."""
        self._draining = True
        deadline = self.clock.monotonic() + self.drain_timeout_s

        def drained() -> bool:
            while self.intake and not self.troubles:
                self._send()
            return not self.intake and not self.flights

        if not self._wait_for(drained, deadline):
            left = self.intake.records + self.flights.records
            log.warning("stopping with %d records not written; they are not committed and will be read again", left)
        self.commits.add(self.flights.ledger.take_committable())
        try:
            self._commit(self.commits.everything(), asynchronous=False)
        except TransientError as exc:
            log.warning("final commit failed: %s", exc)
        self.store.abandon(self.flights.jobs())
        self.source.close()
