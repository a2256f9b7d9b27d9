"""The loop with its ports faked: records flow to an idle writer at once and gather while it is busy,
commits follow the done prefix whatever order writes finish in, dead letters before the commit,
failures pause everything, rebalances and shutdown."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from consumer.core.policy import Backoff, BatchPolicy, Limits
from consumer.decode.decoder import TopicDecoder
from consumer.decode.schema import load_writer_schema
from consumer.events import Events
from consumer.pipeline import Clock, Pipeline
from tests.fakes import FakeClock, FakeDeadLetters, FakeSource, FakeStore
from tests.helpers import DRIVER_SCHEMA, T0_MICROS, FakeMessage, driver_body, driver_view

TOPIC = "driver_stats"
P0, P1 = (TOPIC, 0), (TOPIC, 1)


class Harness:
    def __init__(self, max_records: int = 4, max_wait_ms: int = 1000, events: Events | None = None,
                 max_bytes: int = 32 << 20, max_in_flight: int = 2) -> None:
        view = driver_view()
        decoders = {TOPIC: TopicDecoder(TOPIC, [view], file_schema=load_writer_schema(json.dumps(DRIVER_SCHEMA)))}
        self.clock = FakeClock()
        self.store = FakeStore()
        self.dlq = FakeDeadLetters()
        self.source: FakeSource = None  # type: ignore[assignment]

        def make_source(listener: Any) -> FakeSource:
            self.source = FakeSource(listener, self.clock)
            return self.source

        self.pipeline = Pipeline(decoders, self.store, self.dlq, make_source, limits=Limits(),
                                 policy=BatchPolicy(max_records, max_wait_ms, max_bytes, max_in_flight),
                                 backoff=Backoff(100, 1000), drain_timeout_s=5,
                                 clock=Clock(self.clock.wall, self.clock.monotonic, self.clock.wait_on),
                                 events=events)
        self.view = view
        self.offsets = {P0: 0, P1: 0}

    def produce(self, partition: int, bodies: list[bytes]) -> None:
        tp = (TOPIC, partition)
        msgs = []
        for body in bodies:
            msgs.append(FakeMessage(TOPIC, partition, self.offsets[tp], body))
            self.offsets[tp] += 1
        self.source.add(msgs)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.pipeline.step()

    @staticmethod
    def key(driver_id: int) -> str:
        from consumer.core.dtypes import ENTITY_VALUE_TYPES
        from consumer.feast.keys import serialize_entity_key

        return serialize_entity_key([("driver_id", ENTITY_VALUE_TYPES["INT64"], driver_id)]).hex()

    def stored(self, driver_id: int) -> dict[str, Any]:
        return self.store.read(self.view, self.key(driver_id))


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.source.rebalance("assign", [P0, P1])
    return harness


def test_records_go_to_an_idle_writer_at_once_then_are_committed(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(2)  # read; send
    assert h.store.writes == 4
    assert h.clock.t == 0  # no wait of any kind: the writer was idle
    h.steps(1)  # take the outcome in and commit
    assert h.source.committed_offsets() == {P0: 4}


def test_large_records_make_batches_bounded_in_bytes() -> None:
    h = Harness(max_records=100, max_bytes=3 * len(driver_body(driver_id=0)))
    h.source.rebalance("assign", [P0, P1])
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=i) for i in range(7)])
    h.steps(6)
    assert [len(rows) for _, _, rows, _ in h.store.held] == [3, 3]  # two in flight, at most 3 records each
    h.store.hold = False
    h.store.release()
    h.steps(4)
    assert h.source.committed_offsets() == {P0: 7}
    assert h.store.writes == 7


def test_while_a_batch_is_in_flight_records_gather_until_it_is_done_or_they_are_old() -> None:
    h = Harness(max_records=4, max_wait_ms=1000)
    h.source.rebalance("assign", [P0, P1])
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=1)])
    h.steps(2)
    assert h.store.submissions == 1  # one record, sent at once to the idle writer
    h.produce(0, [driver_body(driver_id=2), driver_body(driver_id=3)])
    h.steps(3)
    assert h.store.submissions == 1 and len(h.pipeline.intake) == 2  # gathering (Nagle)
    h.store.release()  # the batch in flight is done: what gathered goes at once
    h.steps(2)
    assert h.store.submissions == 2
    h.produce(0, [driver_body(driver_id=4)])
    h.steps(2)
    assert h.store.submissions == 2
    h.clock.advance(1.0)  # max_wait_ms is an upper bound: a second batch goes while the first is in flight
    h.steps(1)
    assert h.store.submissions == 3 and len(h.store.held) == 2
    h.store.release()
    h.steps(2)
    assert h.source.committed_offsets() == {P0: 4}


def test_records_go_at_once_while_the_writer_has_room_and_gather_while_it_is_full() -> None:
    h = Harness(max_records=100, max_wait_ms=10_000, max_in_flight=8)
    h.store.window = 3  # the writer keeps three requests in flight
    h.source.rebalance("assign", [P0, P1])
    h.store.hold = True
    for driver_id in (1, 2):
        h.produce(0, [driver_body(driver_id=driver_id)])
        h.steps(2)
    assert [len(rows) for _, _, rows, _ in h.store.held] == [1, 1]  # each at once, though one was in flight
    h.produce(0, [driver_body(driver_id=i) for i in (3, 4)])
    h.steps(2)
    h.produce(0, [driver_body(driver_id=i) for i in (5, 6)])
    h.steps(2)
    # The third batch filled the window (4 rows pending): the next records gather.
    assert [len(rows) for _, _, rows, _ in h.store.held] == [1, 1, 2] and len(h.pipeline.intake) == 2
    waited = h.clock.t
    h.store.release([1, 2])  # two rows answered: the writer has room again
    h.steps(1)
    assert [len(rows) for _, _, rows, _ in h.store.held] == [2, 2]
    assert h.clock.t == waited  # no wait for the gathered records to grow old
    h.store.hold = False
    h.store.release()
    h.steps(3)
    assert h.source.committed_offsets() == {P0: 6}


def test_writes_finishing_out_of_order_commit_only_the_done_prefix() -> None:
    h = Harness(max_records=2, max_in_flight=2)
    h.source.rebalance("assign", [P0, P1])
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(4)
    first, second = [job for job, *_ in h.store.held]
    h.store.release([second])  # offsets 2-3 done, 0-1 not
    h.steps(2)
    assert h.source.committed_offsets() == {}
    h.store.release([first])
    h.steps(2)
    assert h.source.committed_offsets() == {P0: 4}


def test_rejected_records_reach_the_dead_letters_before_the_commit(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), b""])
    h.steps(4)
    assert [r.error.source.offset for r in h.dlq.sent] == [1, 3]
    assert h.source.committed_offsets() == {P0: 4}


def test_a_store_outage_commits_nothing_pauses_and_resumes(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.store.hold = True
    h.steps(2)
    h.store.hold = False
    h.store.down = True  # the writer fails and retries: the batch stays in flight
    h.steps(3)
    assert h.source.commits == []
    assert h.source.paused == {P0, P1}
    h.produce(0, [driver_body(driver_id=9)])  # arrives during the outage: not taken while paused
    h.steps(3)
    assert len(h.pipeline.intake) == 0
    h.store.down = False
    h.steps(3)
    assert h.source.paused == set()
    assert h.source.committed_offsets()[P0] >= 4
    h.steps(3)
    assert h.source.committed_offsets() == {P0: 5}
    assert h.store.writes == 5


class Recorder(Events):
    def __init__(self) -> None:
        self.assembled = 0
        self.failures = 0
        self.paused_now: set[tuple[str, int]] = set()
        self.in_flight_records: list[int] = []
        self.dead_letters = 0

    def batch_assembled(self, batch: Any) -> None:
        self.assembled += 1

    def failed(self, error: Any) -> None:
        self.failures += 1

    def paused(self, partitions: set[tuple[str, int]], paused: bool) -> None:
        self.paused_now = self.paused_now | partitions if paused else self.paused_now - partitions

    def in_flight(self, records: int) -> None:
        self.in_flight_records.append(records)

    def dead_lettered(self, rejected: list[Any]) -> None:
        self.dead_letters += len(rejected)


def test_a_batch_is_assembled_once_through_an_outage_and_new_partitions_show_as_paused() -> None:
    events = Recorder()
    h = Harness(events=events)
    h.source.rebalance("assign", [P0])
    h.store.down = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(4)
    h.store.down = False
    h.steps(1)  # not yet: the outage is over only when the writer says so
    assert events.failures == 1
    h.store.down = True
    h.steps(2)
    h.source.rebalance("assign", [P1])  # during the outage: paused at once, and reported so
    h.steps(2)
    assert events.paused_now == {P0, P1} == h.source.paused
    h.store.down = False
    h.steps(3)
    assert events.assembled == 1 and events.paused_now == set()
    assert h.source.committed_offsets() == {P0: 4}
    assert events.in_flight_records[-1] == 0 and max(events.in_flight_records) == 4


def test_backoff_grows_while_the_dead_letter_topic_stays_down(h: Harness) -> None:
    h.dlq.down = True
    h.produce(0, [b"\x09garbage"])
    h.steps(3)
    first = h.pipeline.troubles.retry_at - h.clock.t
    h.clock.advance(first)
    h.steps(2)
    second = h.pipeline.troubles.retry_at - h.clock.t
    assert second > first


def test_an_unwritable_dead_letter_topic_blocks_the_commit(h: Harness) -> None:
    h.dlq.down = True
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), driver_body(driver_id=3)])
    h.steps(4)
    assert h.source.commits == []
    assert h.source.paused == {P0, P1}
    h.dlq.down = False
    h.clock.advance(1.0)
    h.steps(3)
    assert h.source.committed_offsets() == {P0: 4}
    assert len(h.dlq.sent) == 1
    assert h.source.paused == set()


def test_a_revoke_finishes_buffered_work_and_commits_synchronously(h: Harness) -> None:
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=1)])
    h.steps(2)  # in flight, held
    h.produce(1, [driver_body(driver_id=2)])
    h.steps(1)  # buffered behind the batch in flight
    assert h.store.writes == 0 and len(h.pipeline.intake) == 1
    h.store.hold = False
    h.source.rebalance("revoke", [P1])
    h.pipeline.step()
    assert h.store.writes == 1  # the revoked partition's record, written before letting go
    assert ({P1: 1}, False) in h.source.commits
    assert h.pipeline.assigned == {P0}
    h.store.release()
    h.steps(2)
    assert h.source.committed_offsets() == {P1: 1, P0: 1}


def test_a_revoke_during_an_outage_drops_the_partition_without_committing(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1), driver_body(driver_id=2)])
    h.produce(1, [driver_body(driver_id=3), driver_body(driver_id=4)])
    h.steps(1)
    h.store.down = True
    h.steps(2)
    h.source.rebalance("revoke", [P1])
    h.steps(2)
    assert h.pipeline.intake.partitions() <= {P0}
    assert h.source.commits == []


def test_lost_partitions_are_dropped_without_a_commit(h: Harness) -> None:
    h.store.hold = True
    h.produce(1, [driver_body(driver_id=3)])
    h.steps(2)
    h.source.rebalance("lost", [P1])
    h.pipeline.step()
    h.store.release()
    h.steps(2)
    assert len(h.pipeline.intake) == 0 and not h.pipeline.flights
    assert h.source.commits == []


def test_a_dead_letter_acknowledged_after_its_partition_was_lost_is_counted_and_not_committed() -> None:
    """It is on the topic, so the count says so (the next owner reads the record again and sends a second
    copy, counted too: the count stays equal to the messages on the topic)."""
    events = Recorder()
    h = Harness(events=events)
    h.source.rebalance("assign", [P1])
    h.produce(1, [b"\x09garbage"])
    h.pipeline.step()  # read
    h.source.rebalance("lost", [P1])
    h.steps(3)  # decode and send; lost; the acknowledgement comes after the flight is gone
    assert len(h.dlq.sent) == 1 and not h.pipeline.flights
    assert events.dead_letters == 1
    assert h.source.commits == []


def test_only_newest_values_survive_out_of_order_delivery(h: Harness) -> None:
    s = 1_000_000
    h.produce(0, [driver_body(driver_id=1, ts=T0_MICROS + 5 * s, conv=0.5),
                  driver_body(driver_id=1, ts=T0_MICROS + 1 * s, conv=0.1)])
    h.produce(1, [driver_body(driver_id=1, ts=T0_MICROS + 3 * s, conv=0.3)])
    h.steps(6)
    cells = h.stored(1)
    assert {c.event_ms for c in cells.values()} == {(T0_MICROS + 5 * s) // 1000}
    assert h.source.committed_offsets() == {P0: 2, P1: 1}


def test_a_partition_holding_its_share_is_paused_and_resumed_once_drained() -> None:
    h = Harness(max_records=8, max_in_flight=1)
    h.source.rebalance("assign", [P0, P1])
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=i) for i in range(12)])
    h.produce(1, [driver_body(driver_id=100 + i) for i in range(2)])
    h.steps(1)
    assert P0 in h.source.paused and P1 not in h.source.paused  # P0 holds its share (4 of 8)
    h.steps(1)
    h.store.release()
    h.store.hold = False
    h.steps(8)
    assert h.source.paused == set()
    assert h.source.committed_offsets() == {P0: 12, P1: 2}


def test_a_backlog_is_served_from_every_partition_in_turn() -> None:
    """A backlog in two partitions: every batch takes from both, none waits for the other to drain."""
    h = Harness(max_records=4, max_in_flight=1)
    h.source.rebalance("assign", [P0, P1])
    h.produce(0, [driver_body(driver_id=i) for i in range(8)])
    h.produce(1, [driver_body(driver_id=100 + i) for i in range(8)])
    h.steps(20)
    assert h.source.committed_offsets() == {P0: 8, P1: 8}
    keys = {h.key(i): 0 for i in range(8)} | {h.key(100 + i): 1 for i in range(8)}
    partitions = [set(keys[k] for k in rows.entity_keys) for rows in h.store.submitted]
    # Each poll brings one partition's run (as librdkafka's fetches do); the other is served in the next batch.
    assert all(a | b == {0, 1} for a, b in itertools.pairwise(partitions)), partitions


def test_shutdown_drains_commits_and_leaves(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1)])
    h.pipeline.step()
    h.pipeline.shutdown()
    assert h.store.writes == 1
    assert ({P0: 1}, False) in h.source.commits
    assert h.source.closed


def test_shutdown_gives_up_after_the_drain_timeout_when_the_store_is_down(h: Harness) -> None:
    h.store.down = True
    h.produce(0, [driver_body(driver_id=1)])
    h.steps(2)
    start = h.clock.t
    h.pipeline.shutdown()
    assert h.clock.t - start <= 5.5
    assert h.source.commits == []
    assert h.source.closed


def test_shutdown_abandons_writes_still_in_flight_at_the_drain_timeout(h: Harness) -> None:
    h.store.hold = True
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage"])
    h.steps(2)
    start = h.clock.t
    h.pipeline.shutdown()
    assert 5 <= h.clock.t - start <= 5.5
    assert h.store.abandoned == {1}
    assert h.source.commits == [] and h.source.closed


def test_after_a_failure_whose_work_is_lost_new_partitions_are_not_left_paused(h: Harness) -> None:
    """A broker restart: the batch waits out a failure, the partitions are lost and assigned again."""
    h.dlq.down = True
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), driver_body(driver_id=3)])
    h.steps(4)
    assert h.source.paused == {P0, P1}
    h.source.rebalance("lost", [P0, P1])
    h.steps(3)
    assert len(h.pipeline.intake) == 0 and not h.pipeline.flights and h.source.paused == set()
    h.dlq.down = False
    h.source.queues[P0] = []  # the new owner (this process again) reads from the last commit
    h.offsets[P0] = 0
    h.source.rebalance("assign", [P0, P1])
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(4)
    assert h.source.paused == set()
    assert h.source.committed_offsets() == {P0: 4}


def test_a_failed_asynchronous_commit_is_sent_again_when_the_partition_goes_idle(h: Harness) -> None:
    """Seen in the fault suite: commits refused during a rebalance, and no later batch to cover them."""
    h.source.fail_async_commits = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(3)
    assert h.source.committed_offsets() == {}
    h.source.fail_async_commits = False  # the rebalance is over; nothing more arrives on the partition
    for _ in range(30):
        h.steps(1)
        h.clock.advance(0.1)
    assert h.source.committed_offsets() == {P0: 4}


def test_a_failed_commit_is_not_sent_again_for_a_partition_given_away(h: Harness) -> None:
    h.source.fail_async_commits = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(2)
    h.source.rebalance("lost", [P0])  # delivered in the same poll as the commit's failure
    h.steps(1)
    h.source.fail_async_commits = False
    for _ in range(30):
        h.steps(1)
        h.clock.advance(0.1)
    assert h.source.committed_offsets() == {}


def test_every_event_reaches_every_listener_of_a_fan_out() -> None:
    from consumer.events import EventFanout

    class Tape(Events):
        def __init__(self) -> None:
            self.heard: list[tuple[Any, ...]] = []

        def revoked(self, partitions: list[tuple[str, int]], lost: bool) -> None:
            self.heard.append(("revoked", partitions, lost))

        def in_flight(self, records: int) -> None:
            self.heard.append(("in_flight", records))

    tapes = [Tape(), Tape()]
    fanout = EventFanout(list(tapes))
    fanout.revoked([P0], lost=True)
    fanout.in_flight(3)
    fanout.loop_turned(1.0)  # a listener that does not care is left alone
    assert tapes[0].heard == tapes[1].heard == [("revoked", [P0], True), ("in_flight", 3)]
