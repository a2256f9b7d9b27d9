"""The consumer loop: poll -> micro-batch -> decode -> guarded write -> dead letters -> commit.

One record's way, in one direction:

    KafkaSource.poll  ->  buffer (BatchPolicy decides when it is a batch)
        -> batch.assemble      decode, map, coalesce, encode; bad records become `Rejected`
        -> Store.write         guarded upserts, one outcome per entity
        -> DeadLetterProducer  rejected records (and rows Cassandra refused), acknowledged by Kafka
        -> KafkaSource.commit  the next offset of every message of the batch, whatever became of it

The loop is sequential on purpose: guarded writes cost far more than decoding, so nothing is gained by
overlapping them, and one thread keeps rebalances, retries and shutdown simple. It never buffers
without bound: it takes at most one batch from Kafka at a time, librdkafka's prefetch is bounded
(`queued.max.messages.kbytes`), and while a batch waits out a failure every partition is paused.

A transient failure anywhere (registry, Cassandra, the dead-letter topic, a synchronous commit) sends
the whole batch around again after a backoff; guarded writes make the repetition harmless, and nothing
of the batch is committed before all of it went through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import Message

from consumer.core.errors import TransientError, WriteRefused
from consumer.core.policy import Backoff, BatchPolicy, Limits
from consumer.core.records import Rejected, source_of
from consumer.core.store import Store
from consumer.decode.assemble import assemble
from consumer.decode.decoder import TopicDecoder
from consumer.events import Events
from consumer.kafka.source import TP, RebalanceListener

log = logging.getLogger(__name__)

# A poll blocks in C, where Python signal handlers cannot run, and returns early only once it has all the
# messages asked for: short polls keep SIGTERM and batch deadlines prompt.
MAX_POLL_BLOCK_S = 0.1
RECOMMIT_INTERVAL_S = 1.0


class Source(Protocol):
    group_id: str

    def subscribe(self) -> None: ...
    def poll(self, max_messages: int, timeout_s: float) -> list[Message]: ...
    def assignment(self) -> set[TP]: ...
    def pause(self, partitions: Iterable[TP]) -> None: ...
    def resume(self, partitions: Iterable[TP]) -> None: ...
    def commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None: ...
    def close(self) -> None: ...


class DeadLetters(Protocol):
    def send(self, rejected: list[Rejected], timeout_s: float | None = None) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass
class _State:
    buffer: list[Message] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes of each buffered message (key and value)
    oldest_ms: int | None = None  # monotonic ms at which the oldest buffered message arrived
    failures: int = 0  # consecutive transient failures of the current batch
    retry_at: float = 0.0  # monotonic seconds
    paused: bool = False
    assigned: set[TP] = field(default_factory=set)
    done: dict[TP, int] = field(default_factory=dict)  # next offset after the last batch that went through
    recommit: set[TP] = field(default_factory=set)  # asynchronous commits that failed, to be sent again
    recommit_at: float = 0.0  # monotonic seconds


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
        self.events = events or Events()
        self.clock = clock or Clock()
        self.limits = limits
        self.policy = policy
        self.backoff = backoff
        self.drain_timeout_s = drain_timeout_s
        self.state = _State()
        self._drain_deadline: float | None = None  # monotonic seconds, once shutting down
        self._stop = stop or threading.Event()
        self.source = source_factory(self)

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Consume until `stop()`; then drain, commit and leave the group."""
        self.source.subscribe()
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException:
            self.source.close()  # leave the group without committing anything more
            raise
        self.shutdown()

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stop.set()

    def step(self) -> None:
        """One turn: take messages, and write the batch when it is complete."""
        st = self.state
        now = self.clock.monotonic()
        self.events.loop_turned(self.clock.wall())
        now_ms = int(now * 1000)
        if st.recommit and now >= st.recommit_at:
            self._recommit(now)
        if st.retry_at > now:
            # Waiting out a failure: partitions are paused; polling keeps the group membership alive.
            self._accept(self.source.poll(1, min(st.retry_at - now, MAX_POLL_BLOCK_S)), now_ms)
            return
        if not self._due(now_ms):
            # First take what is already there without waiting (records that arrived during the last write
            # are due at once), and block only when that does not make a batch.
            self._accept(self.source.poll(self._room(), 0), now_ms)
            if not self._due(now_ms):
                timeout = min(self.policy.poll_timeout_ms(now_ms, st.oldest_ms) / 1000, MAX_POLL_BLOCK_S)
                self._accept(self.source.poll(self._room(), timeout), now_ms)
                now_ms = int(self.clock.monotonic() * 1000)
                if not self._due(now_ms):
                    return
        self._flush()

    def _due(self, now_ms: int) -> bool:
        st = self.state
        return self.policy.should_flush(now_ms, st.oldest_ms, len(st.buffer), sum(st.sizes))

    def _room(self) -> int:
        return self.policy.room(len(self.state.buffer), sum(self.state.sizes))

    def _next_batch(self) -> list[Message]:
        st = self.state
        return st.buffer[: self.policy.batch_length(st.sizes)]

    def _taken(self, count: int) -> None:
        del self.state.buffer[:count]
        del self.state.sizes[:count]

    def _accept(self, messages: list[Message], poll_started_ms: int) -> None:
        if not messages:
            return
        st = self.state
        if st.oldest_ms is None:
            # A batch ages from when its first record reached Kafka: records that waited through the previous
            # write are due at once, so writes follow each other under load, and batching only waits when
            # the stream is slow. The poll's start bounds it, for producers whose clocks run ahead.
            st.oldest_ms = poll_started_ms
            kind, created_ms = messages[0].timestamp()
            if kind and created_ms > 0:
                age_ms = int(self.clock.wall() * 1000) - created_ms
                st.oldest_ms = min(poll_started_ms, int(self.clock.monotonic() * 1000) - max(0, age_ms))
        st.buffer.extend(messages)
        st.sizes.extend(len(m.value() or b"") + len(m.key() or b"") for m in messages)
        self.events.received(messages)

    def _flush(self) -> None:
        st = self.state
        messages = self._next_batch()
        try:
            self._process(messages)
        except TransientError as exc:
            st.failures += 1
            delay_ms = self.backoff.delay_ms(st.failures)
            st.retry_at = self.clock.monotonic() + delay_ms / 1000
            log.warning("batch of %d messages not done (%s); retrying in %d ms", len(messages), exc, delay_ms)
            self.events.failed(exc)
            self._pause()
            return
        self._taken(len(messages))
        st.oldest_ms = int(self.clock.monotonic() * 1000) if st.buffer else None
        st.failures = 0
        st.retry_at = 0.0
        self._resume()

    def _process(self, messages: list[Message]) -> None:
        """decode -> write -> dead letters -> commit, for one batch. Raises TransientError."""
        batch = assemble(messages, self.decoders, self.limits, int(self.clock.wall() * 1000))
        if self.state.failures == 0:  # a batch sent around again is counted once
            self.events.batch_assembled(batch)
        refused = list(batch.rejected)
        for view_batch in batch.views:
            report = self.store.write(view_batch.view, view_batch.rows, budget_s=self._time_left())
            for row, reason in report.failures.items():
                message = batch.messages[int(view_batch.positions[row])]
                refused.append(Rejected(message, WriteRefused(reason).at(source_of(message))))
            self.events.view_written(view_batch, report, self.clock.wall())
        self.dead_letters.send(refused, timeout_s=self._time_left())
        self.events.dead_lettered(refused)
        self._commit(batch.next_offsets, asynchronous=True)

    def _time_left(self) -> float | None:
        """While draining, the seconds left of the drain timeout: no write or dead-letter wait outlasts it."""
        if self._drain_deadline is None:
            return None
        return max(0.0, self._drain_deadline - self.clock.monotonic())

    def _commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None:
        st = self.state
        owned = {tp: o for tp, o in offsets.items() if tp in st.assigned}
        if not owned:
            return
        self.source.commit(owned, asynchronous=asynchronous)
        st.done.update(owned)
        self.events.committed(owned, self.clock.wall())

    def _recommit(self, now: float) -> None:
        """Send again the commits that failed, for partitions still owned (at most once a second)."""
        st = self.state
        offsets = {tp: st.done[tp] for tp in st.recommit if tp in st.done}
        st.recommit.clear()
        st.recommit_at = now + RECOMMIT_INTERVAL_S
        self._commit(offsets, asynchronous=True)

    def _pause(self) -> None:
        st = self.state
        if not st.paused and st.assigned:
            self.source.pause(st.assigned)
            self.events.paused(set(st.assigned), True)
        st.paused = True

    def _resume(self) -> None:
        st = self.state
        if st.paused and st.assigned:
            self.source.resume(st.assigned)
            self.events.paused(set(st.assigned), False)
        st.paused = False

    def _drop(self, partitions: set[TP]) -> None:
        st = self.state
        kept = [i for i, m in enumerate(st.buffer) if (m.topic(), m.partition()) not in partitions]
        st.buffer = [st.buffer[i] for i in kept]
        st.sizes = [st.sizes[i] for i in kept]
        if not st.buffer:
            # Nothing waits out a failure any more: what comes next must not stay paused.
            st.oldest_ms = None
            st.failures = 0
            st.retry_at = 0.0
            self._resume()

    # ------------------------------------------------------------------ rebalances (called inside poll)

    def on_assign(self, partitions: list[TP]) -> None:
        st = self.state
        st.assigned.update(partitions)
        if st.paused:
            self.source.pause(partitions)  # a batch is waiting out a failure: take nothing new yet
            self.events.paused(set(partitions), True)
        log.info("assigned %s", sorted(partitions))
        self.events.assigned(partitions)

    def on_revoke(self, partitions: list[TP]) -> None:
        """Finish the buffered work and commit before the partitions go to another member."""
        st = self.state
        revoked = set(partitions)
        if any((m.topic(), m.partition()) in revoked for m in st.buffer):
            if st.failures == 0:
                try:
                    while st.buffer:
                        batch = self._next_batch()
                        self._process(batch)
                        self._taken(len(batch))
                except TransientError as exc:
                    log.warning("could not finish the revoked partitions' messages (%s); the next owner "
                                "reads them again", exc)
            self._drop(revoked)
        done = {tp: o for tp, o in st.done.items() if tp in revoked}
        try:
            self._commit(done, asynchronous=False)
        except TransientError as exc:
            log.warning("final commit for revoked partitions failed (%s); the next owner may read "
                        "some records again", exc)
        st.assigned -= revoked
        for tp in revoked:
            st.done.pop(tp, None)
        log.info("revoked %s", sorted(revoked))
        self.events.revoked(partitions, lost=False)

    def on_commit_failed(self, partitions: list[TP], reason: str) -> None:
        st = self.state
        owned = [tp for tp in partitions if tp in st.assigned]
        if owned:
            log.warning("asynchronous commit failed for %s (%s); sending it again", sorted(owned), reason)
            st.recommit.update(owned)

    def on_lost(self, partitions: list[TP]) -> None:
        """The partitions already belong to someone else: drop their work, commit nothing for them."""
        st = self.state
        lost = set(partitions)
        self._drop(lost)
        st.assigned -= lost
        for tp in lost:
            st.done.pop(tp, None)
        log.warning("lost %s", sorted(lost))
        self.events.revoked(partitions, lost=True)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Drain within the configured time, commit synchronously, leave the group."""
        st = self.state
        deadline = self._drain_deadline = self.clock.monotonic() + self.drain_timeout_s
        while st.buffer and self.clock.monotonic() < deadline:
            if st.retry_at > self.clock.monotonic():
                self.clock.sleep(max(0.0, min(st.retry_at, deadline) - self.clock.monotonic()))
                continue
            self._flush()
        if st.buffer:
            log.warning("stopping with %d messages not written; they are not committed and will be read again",
                        len(st.buffer))
        try:
            self._commit(dict(st.done), asynchronous=False)
        except TransientError as exc:
            log.warning("final commit failed: %s", exc)
        st.buffer, st.sizes = [], []  # nothing is left for the revoke that leaving the group triggers
        self.source.close()
