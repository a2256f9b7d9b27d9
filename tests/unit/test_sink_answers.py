"""How the writer reads Cassandra's not-applied answers (shapes as Cassandra 5 returns them)."""

from __future__ import annotations

from datetime import datetime

from consumer import guard
from consumer.cassandra_sink import _answer_rows
from consumer.guard import Known, Op, Step
from consumer.rows import NULL_MS

UPDATE = Step(Op.UPDATE_OLDER, 1000)
T5 = datetime(1970, 1, 1, 0, 0, 5)  # the driver returns naive UTC datetimes


def test_a_single_update_answer_is_the_row_of_its_one_feature() -> None:
    # No key columns in a single statement's answer: only [applied] and the condition's columns.
    answer = _answer_rows({"acc_rate": UPDATE}, [{"[applied]": False, "event_ts": T5}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": Known(True, 5000, None)}


def test_a_single_update_on_a_missing_row_answers_nothing_but_applied() -> None:
    answer = _answer_rows({"acc_rate": UPDATE}, [{"[applied]": False}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": guard.MISSING}


def test_a_single_update_on_a_row_without_event_ts() -> None:
    answer = _answer_rows({"acc_rate": UPDATE}, [{"[applied]": False, "event_ts": None}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": Known(True, NULL_MS, None)}


def test_a_batch_answer_names_its_rows_and_leaves_missing_ones_out() -> None:
    rows = [{"[applied]": False, "entity_key": "k", "feature_name": "a", "event_ts": T5, "created_ts": None}]
    answer = _answer_rows({"a": UPDATE, "b": UPDATE}, rows)
    assert guard.learn(["a", "b"], answer) == {"a": Known(True, 5000, NULL_MS), "b": guard.MISSING}
