"""When done offsets are committed: at most every interval, whether batches are in flight or not, and
nothing done is left uncommitted once its time comes."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.commits import Commits

TP = ("t", 0)


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 5)), min_size=1, max_size=60))
def test_commits_come_at_most_every_interval_and_the_last_done_offset_is_committed(
    steps: list[tuple[int, int]]
) -> None:
    commits = Commits(interval_s=0.1)
    now, offset, sent_at, committed = 0.0, 0, [], 0
    for gap_ms, records in steps:  # a batch of `records` finishes `gap_ms` after the last turn
        now += gap_ms / 1000
        offset += records
        commits.add({TP: offset})
        due = commits.due(now)
        if due:
            sent_at.append(now)
            committed = due[TP]
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(sent_at))
    due_at = commits.due_at()
    if committed != offset:
        assert due_at is not None and due_at <= now + 0.1
        assert commits.due(due_at) == {TP: offset}  # once due, what is done goes
    else:
        assert due_at is None
