"""The offset ledger: whatever order batches finish in, a partition's committed offset only advances over
a prefix of offsets whose batches are all done."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.ledger import OffsetLedger

P0, P1 = ("t", 0), ("t", 1)


def test_out_of_order_completion_commits_only_the_done_prefix() -> None:
    ledger = OffsetLedger()
    ledger.open(1, {P0: 10, P1: 5})
    ledger.open(2, {P0: 20})
    ledger.open(3, {P0: 30, P1: 8})
    ledger.close(2)
    assert ledger.take_committable() == {}
    ledger.close(3)
    assert ledger.take_committable() == {}
    ledger.close(1)
    assert ledger.take_committable() == {P0: 30, P1: 8}
    assert ledger.take_committable() == {}


def test_a_forgotten_partition_is_never_committed_and_others_go_on() -> None:
    ledger = OffsetLedger()
    ledger.open(1, {P0: 10, P1: 5})
    ledger.open(2, {P1: 9})
    ledger.forget([P0])
    ledger.close(1)
    assert ledger.take_committable() == {P1: 5}
    ledger.close(2)
    assert ledger.take_committable() == {P1: 9}
    assert ledger.open_tickets() == set()


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.sets(st.integers(0, 3), min_size=1), st.integers(1, 5)), min_size=1, max_size=30),
       st.randoms(use_true_random=False))
def test_commits_never_pass_an_unfinished_batch(batches: list[tuple[set[int], int]], rng) -> None:  # type: ignore[no-untyped-def]
    ledger = OffsetLedger()
    ends: dict[int, int] = {}
    runs: dict[int, dict[tuple[str, int], int]] = {}
    for ticket, (partitions, size) in enumerate(batches):
        runs[ticket] = {}
        for p in partitions:
            ends[p] = ends.get(p, 0) + size
            runs[ticket][("t", p)] = ends[p]
        ledger.open(ticket, runs[ticket])
    order = list(runs)
    rng.shuffle(order)
    committed: dict[tuple[str, int], int] = {}
    for n, ticket in enumerate(order):
        ledger.close(ticket)
        for tp, offset in ledger.take_committable().items():
            assert offset > committed.get(tp, 0)
            committed[tp] = offset
        done = set(order[: n + 1])
        for tp, offset in committed.items():
            # Every batch with a run at or below the committed offset is done.
            assert all(t in done for t, r in runs.items() if tp in r and r[tp] <= offset)
    assert committed == {("t", p): end for p, end in ends.items()}
