"""The loop with its ports faked: commit after write, dead letters before commit, failures, rebalances."""

from __future__ import annotations

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
                 max_bytes: int = 32 << 20) -> None:
        view = driver_view()
        import json

        decoders = {TOPIC: TopicDecoder(TOPIC, [view], file_schema=load_writer_schema(json.dumps(DRIVER_SCHEMA)))}
        self.clock = FakeClock()
        self.store = FakeStore()
        self.dlq = FakeDeadLetters()
        self.source: FakeSource = None  # type: ignore[assignment]

        def make_source(listener: Any) -> FakeSource:
            self.source = FakeSource(listener, self.clock)
            return self.source

        self.pipeline = Pipeline(decoders, self.store, self.dlq, make_source, limits=Limits(),
                                 policy=BatchPolicy(max_records, max_wait_ms, max_bytes),
                                 backoff=Backoff(100, 1000), drain_timeout_s=5,
                                 clock=Clock(self.clock.wall, self.clock.monotonic, self.clock.sleep),
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

    def stored(self, driver_id: int) -> dict[str, Any]:
        from consumer.core.dtypes import ENTITY_VALUE_TYPES
        from consumer.feast.keys import serialize_entity_key

        key = serialize_entity_key([("driver_id", ENTITY_VALUE_TYPES["INT64"], driver_id)]).hex()
        return self.store.read(self.view, key)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.source.rebalance("assign", [P0, P1])
    return harness


def test_a_full_batch_is_written_then_committed(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(2)
    assert h.store.writes == 4
    assert h.source.committed_offsets() == {P0: 4}


def test_large_records_make_batches_bounded_in_bytes() -> None:
    h = Harness(max_records=100, max_bytes=3 * len(driver_body(driver_id=0)))
    h.source.rebalance("assign", [P0, P1])
    h.produce(0, [driver_body(driver_id=i) for i in range(7)])
    h.steps(3)
    assert h.source.committed_offsets() == {P0: 6}  # two batches of three; the seventh is not yet due
    assert [c[0][P0] for c in h.source.commits] == [3, 6]


def test_a_partial_batch_waits_for_its_deadline(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1)])
    h.pipeline.step()
    assert h.store.writes == 0
    h.clock.advance(1.0)
    h.steps(1)
    assert h.store.writes == 1
    assert h.source.committed_offsets() == {P0: 1}


def test_rejected_records_reach_the_dead_letters_before_the_commit(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), b""])
    h.steps(2)
    assert [r.error.source.offset for r in h.dlq.sent] == [1, 3]
    assert h.source.committed_offsets() == {P0: 4}


def test_a_store_outage_commits_nothing_pauses_and_resumes(h: Harness) -> None:
    h.store.down = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(3)
    assert h.source.commits == []
    assert h.source.paused == {P0, P1}
    h.produce(0, [driver_body(driver_id=9)])  # arrives during the outage: not taken while paused
    h.store.down = False
    h.clock.advance(1.0)
    h.steps(3)
    assert h.source.paused == set()
    assert h.source.committed_offsets()[P0] >= 4
    h.clock.advance(1.0)
    h.steps(3)
    assert h.source.committed_offsets() == {P0: 5}
    assert h.store.writes == 5


class Recorder(Events):
    def __init__(self) -> None:
        self.assembled = 0
        self.paused_now: set[tuple[str, int]] = set()

    def batch_assembled(self, batch: Any) -> None:
        self.assembled += 1

    def paused(self, partitions: set[tuple[str, int]], paused: bool) -> None:
        self.paused_now = self.paused_now | partitions if paused else self.paused_now - partitions


def test_a_batch_sent_around_again_is_reported_once_and_new_partitions_show_as_paused() -> None:
    events = Recorder()
    h = Harness(events=events)
    h.source.rebalance("assign", [P0])
    h.store.down = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    for _ in range(4):
        h.steps(1)
        h.clock.advance(h.pipeline.state.retry_at - h.clock.t)
    assert events.assembled == 1 and h.pipeline.state.failures > 1
    h.source.rebalance("assign", [P1])  # during the outage: paused at once, and reported so
    h.steps(2)  # one more failed round, then a poll (while waiting) delivers the assignment
    assert events.paused_now == {P0, P1} == h.source.paused
    h.store.down = False
    h.clock.advance(h.pipeline.state.retry_at - h.clock.t)
    h.steps(1)
    assert events.assembled == 1 and events.paused_now == set()
    assert h.source.committed_offsets() == {P0: 4}


def test_backoff_grows_while_the_store_stays_down(h: Harness) -> None:
    h.store.down = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(1)
    first = h.pipeline.state.retry_at - h.clock.t
    h.clock.advance(first)
    h.steps(1)
    second = h.pipeline.state.retry_at - h.clock.t
    assert second > first


def test_an_unwritable_dead_letter_topic_blocks_the_commit(h: Harness) -> None:
    h.dlq.down = True
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), driver_body(driver_id=3)])
    h.steps(3)
    assert h.source.commits == []
    h.dlq.down = False
    h.clock.advance(1.0)
    h.steps(2)
    assert h.source.committed_offsets() == {P0: 4}
    assert len(h.dlq.sent) == 1


def test_a_revoke_finishes_buffered_work_and_commits_synchronously(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1)])
    h.produce(1, [driver_body(driver_id=2)])
    h.pipeline.step()  # buffered, batch not due yet
    assert h.store.writes == 0
    h.source.rebalance("revoke", [P1])
    h.pipeline.step()
    assert h.store.writes == 2
    assert ({P1: 1}, False) in h.source.commits
    assert h.pipeline.state.assigned == {P0}


def test_a_revoke_during_an_outage_drops_the_partition_without_committing(h: Harness) -> None:
    h.store.down = True
    h.produce(0, [driver_body(driver_id=1), driver_body(driver_id=2)])
    h.produce(1, [driver_body(driver_id=3), driver_body(driver_id=4)])
    h.steps(2)
    h.source.rebalance("revoke", [P1])
    h.steps(3)  # a revoke arrives inside a poll: the next turn spent waiting out the failure
    assert h.pipeline.state.buffer
    assert all(m.partition() == 0 for m in h.pipeline.state.buffer)
    assert h.source.commits == []


def test_lost_partitions_are_dropped_without_a_commit(h: Harness) -> None:
    h.produce(1, [driver_body(driver_id=3)])
    h.pipeline.step()
    h.source.rebalance("lost", [P1])
    h.pipeline.step()
    assert h.pipeline.state.buffer == []
    assert h.source.commits == []


def test_only_newest_values_survive_out_of_order_delivery(h: Harness) -> None:
    s = 1_000_000
    h.produce(0, [driver_body(driver_id=1, ts=T0_MICROS + 5 * s, conv=0.5),
                  driver_body(driver_id=1, ts=T0_MICROS + 1 * s, conv=0.1)])
    h.produce(1, [driver_body(driver_id=1, ts=T0_MICROS + 3 * s, conv=0.3)])
    h.steps(1)  # buffered: three records do not make a batch
    h.clock.advance(1.0)
    h.steps(2)
    cells = h.stored(1)
    assert {c.event_ms for c in cells.values()} == {(T0_MICROS + 5 * s) // 1000}
    assert h.source.committed_offsets() == {P0: 2, P1: 1}


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
    h.pipeline.step()
    start = h.clock.t
    h.pipeline.shutdown()
    assert h.clock.t - start <= 5.5
    assert h.source.commits == []
    assert h.source.closed


def test_while_draining_no_write_or_dead_letter_wait_outlasts_the_drain_timeout(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage"])
    h.pipeline.step()
    assert h.store.budgets == [] and h.dlq.timeouts == []
    h.clock.t += 0.5
    h.pipeline.shutdown()  # drain_timeout_s 5
    assert len(h.store.budgets) == 1 and len(h.dlq.timeouts) == 1
    assert 0 < h.store.budgets[0] <= 5 and 0 < h.dlq.timeouts[0] <= 5  # type: ignore[operator]


def test_in_normal_running_writes_have_no_budget(h: Harness) -> None:
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(2)
    assert h.store.budgets == [None]


def test_after_a_failed_batch_is_lost_new_partitions_are_not_left_paused(h: Harness) -> None:
    """A broker restart: the batch waits out a failure, the partitions are lost and assigned again."""
    h.dlq.down = True
    h.produce(0, [driver_body(driver_id=1), b"\x09garbage", driver_body(driver_id=2), driver_body(driver_id=3)])
    h.steps(2)
    assert h.source.paused == {P0, P1}
    h.source.rebalance("lost", [P0, P1])
    h.steps(3)  # delivered inside a poll: a turn spent waiting out the failure
    assert h.pipeline.state.buffer == [] and h.source.paused == set()
    h.dlq.down = False
    h.source.queues[P0] = []  # the new owner (this process again) reads from the last commit
    h.offsets[P0] = 0
    h.source.rebalance("assign", [P0, P1])
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(3)
    assert h.source.paused == set()
    assert h.source.committed_offsets() == {P0: 4}


def test_a_failed_asynchronous_commit_is_sent_again_when_the_partition_goes_idle(h: Harness) -> None:
    """Seen in the fault suite: commits refused during a rebalance, and no later batch to cover them."""
    h.source.fail_async_commits = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(2)
    assert h.source.committed_offsets() == {}
    h.source.fail_async_commits = False  # the rebalance is over; nothing more arrives on the partition
    for _ in range(30):
        h.steps(1)
        h.clock.advance(0.1)
    assert h.source.committed_offsets() == {P0: 4}


def test_a_failed_commit_is_not_sent_again_for_a_partition_given_away(h: Harness) -> None:
    h.source.fail_async_commits = True
    h.produce(0, [driver_body(driver_id=i) for i in range(4)])
    h.steps(1)
    h.source.rebalance("lost", [P0])
    h.source.fail_async_commits = False
    for _ in range(30):
        h.steps(1)
        h.clock.advance(0.1)
    assert h.source.committed_offsets() == {}
