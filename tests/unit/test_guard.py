"""The guard's decisions, driven against a model of one Cassandra row's lightweight transactions.

The model answers as Cassandra 5 does (checked in tests/contract against the real thing): a not-applied
INSERT IF NOT EXISTS returns the whole row; a not-applied UPDATE returns the columns of its condition;
a comparison with a null column is false; an UPDATE on a missing row is not applied and returns nothing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core import guard
from consumer.core.guard import NULL_MS, FirstGuess, Known, Op

Row = tuple[int | None, int | None] | None  # (event_ms or None, created_ms or None) or no row


def lwt(step: guard.Step, row: Row, ours: tuple[int, int]) -> tuple[bool, Row, dict[str, Any] | None]:
    """Apply one conditional statement to the model row: (applied, new row, answer row if not applied)."""
    new: Row = (ours[0], None if ours[1] == NULL_MS else ours[1])
    if step.op is Op.INSERT:
        if row is None:
            return True, new, None
        return False, row, {"event_ts": row[0], "created_ts": row[1]}
    if row is None:
        return False, row, None
    event, created = row
    if step.op is Op.UPDATE_NULL_EVENT:
        return (True, new, None) if event is None else (False, row, {"event_ts": event})
    if event is None:  # any comparison with null is false
        return False, row, {"event_ts": None, "created_ts": created}
    if step.op is Op.UPDATE_OLDER:
        ok = event < step.cond_event_ms  # type: ignore[operator]
        return (True, new, None) if ok else (False, row, {"event_ts": event})
    if step.op is Op.UPDATE_TIE:
        ok = event == step.cond_event_ms and created is not None and created <= step.cond_created_ms  # type: ignore[operator]
    else:
        ok = event == step.cond_event_ms and created == step.cond_created_ms
    return (True, new, None) if ok else (False, row, {"event_ts": event, "created_ts": created})


def version(row: Row) -> tuple[int, int]:
    assert row is not None
    return (NULL_MS if row[0] is None else row[0], NULL_MS if row[1] is None else row[1])


created_strategy = st.one_of(st.none(), st.integers(0, 3))
# A stored event_ts is null only where something other than a guarded write made the row.
row_strategy = st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.integers(0, 3)), created_strategy))


@settings(max_examples=2000, deadline=None)
@given(stored=row_strategy, event=st.integers(0, 3), created=created_strategy, guess=st.booleans())
def test_the_protocol_ends_at_the_guard_rule_within_four_rounds(
    stored: Row, event: int, created: int | None, guess: bool
) -> None:
    ours = (event, NULL_MS if created is None else created)
    row, known, rounds = stored, None, 0
    while True:
        step = guard.decide(ours, known, guess)
        if step is None:
            break
        rounds += 1
        assert rounds <= 4
        applied, row, answer = lwt(step, row, ours)
        if applied:
            break
        known = guard.learn(["f"], {"f": answer} if answer is not None else {})["f"]
    should_write = stored is None or ours >= version(stored)
    assert version(row) == (ours if should_write else version(stored))


def test_a_stored_row_without_event_ts_is_overwritten_by_its_own_condition() -> None:
    known = guard.learn(["f"], {"f": {"event_ts": None}})["f"]
    assert guard.decide((5, NULL_MS), known, guess_exists=True) == guard.Step(Op.UPDATE_NULL_EVENT)


def test_learning_distinguishes_missing_null_and_unknown_created() -> None:
    learnt = guard.learn(["a", "b", "c"], {"a": {"event_ts": 5}, "b": {"event_ts": 5, "created_ts": None}})
    assert learnt == {"a": Known(True, 5, None), "b": Known(True, 5, NULL_MS), "c": guard.MISSING}


def test_certainly_stale_only_below_the_bound() -> None:
    assert guard.certainly_stale((1, 5), (2, NULL_MS))
    assert not guard.certainly_stale((2, NULL_MS), (2, NULL_MS))  # a tie is written (the later write wins)
    assert not guard.certainly_stale((3, 0), (2, 9))
    assert not guard.certainly_stale((3, 0), None)


def test_the_bound_after_a_write_is_the_smallest_version_held() -> None:
    assert guard.lower_bound_after((5, 0), True, [(7, 0)]) == (5, 0)
    assert guard.lower_bound_after((5, 0), False, [(7, 0), (6, 1)]) == (6, 1)


def test_first_guess_follows_what_unknown_entities_turned_out_to_be() -> None:
    g = FirstGuess()
    for _ in range(20):
        g = g.observe(False)
    assert not g.guess()
    for _ in range(40):
        g = g.observe(True)
    assert g.guess()
