"""The intake: per-partition queues, taken from in turn, each partition's records in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.intake import Intake
from tests.helpers import FakeMessage


def messages(partition: int, n: int, start: int = 0, size: int = 10) -> list[FakeMessage]:
    return [FakeMessage("t", partition, start + i, b"x" * size) for i in range(n)]


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(1, 60))
def test_a_batch_takes_a_fair_share_from_every_partition_in_order(backlog: list[int], max_records: int) -> None:
    intake = Intake(max_records=1000, max_bytes=1 << 20)
    for p, n in enumerate(backlog):
        intake.add(messages(p, n), now=0.0)
    taken = intake.take(max_records, 1 << 20)
    assert len(taken) == min(max_records, sum(backlog))
    per = {p: [e.message.offset() for e in taken if e.message.partition() == p] for p in range(len(backlog))}
    for p, offsets in per.items():
        assert offsets == list(range(len(offsets)))  # in order, from the front
        # Fair: a partition gets less than an equal share only when it has no more.
        share = max_records // max(1, len([n for n in backlog if n]))
        assert len(offsets) >= min(backlog[p], share)
    assert len(intake) == sum(backlog) - len(taken)


def test_the_byte_bound_holds_unless_one_record_is_larger() -> None:
    intake = Intake(max_records=100, max_bytes=1000)
    intake.add(messages(0, 5, size=300), now=0.0)
    assert len(intake.take(100, 1000)) == 3
    intake.add(messages(1, 1, size=5000), now=0.0)
    assert len(intake.take(100, 100)) == 1  # one record, however large


def test_full_partitions_pause_and_resume_at_half_their_share() -> None:
    intake = Intake(max_records=8, max_bytes=1 << 20)
    intake.add(messages(0, 4), now=0.0)
    intake.add(messages(1, 1), now=0.0)
    assert intake.full({("t", 0), ("t", 1)}, assigned=2) == {("t", 0)}
    intake.take(2, 1 << 20)
    assert intake.drained({("t", 0)}, assigned=2) == set()  # 3 left of a share of 4
    intake.take(2, 1 << 20)
    assert intake.drained({("t", 0)}, assigned=2) == {("t", 0)}


def test_records_put_back_come_first_again_and_dropped_partitions_are_gone() -> None:
    intake = Intake(max_records=100, max_bytes=1 << 20)
    intake.add(messages(0, 3), now=1.0)
    intake.add(messages(1, 2), now=2.0)
    taken = intake.take(4, 1 << 20)
    intake.put_back(taken)
    again = intake.take(5, 1 << 20)
    assert sorted((e.message.partition(), e.message.offset()) for e in again) == [(0, 0), (0, 1), (0, 2), (1, 0),
                                                                                  (1, 1)]
    intake.put_back(again)
    assert intake.oldest() == 1.0
    assert intake.drop([("t", 0)]) == 3 and len(intake) == 2 and intake.partitions() == {("t", 1)}
