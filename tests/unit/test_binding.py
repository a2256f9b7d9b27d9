"""The round binder against the driver's own `bind`: the same bytes, the same routing key, the same
statement settings; the driver's `bind` wherever the statement is not the one the layout describes."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.cqltypes import BytesType, TimestampType, UTF8Type
from cassandra.protocol import ColumnMetadata
from cassandra.query import PreparedStatement
from hypothesis import given
from hypothesis import strategies as st

from consumer.cassandra.binding import INSERT_LAYOUT, UPDATE_OLDER_LAYOUT, RoundBinder

TYPES = {"entity_key": UTF8Type, "value": BytesType, "event_ts": TimestampType, "created_ts": TimestampType}


def prepared(layout: tuple[str, ...], features: int, policy: Any = None) -> PreparedStatement:
    columns = [ColumnMetadata("ks", "t", name, TYPES[name]) for name in layout * features]
    key_index = [i for i, c in enumerate(columns) if c.name == "entity_key"][:1]
    statement = PreparedStatement(columns, b"id", key_index, "BEGIN UNLOGGED BATCH ... APPLY BATCH", "ks", 4,
                                  [], None, column_encryption_policy=policy)
    statement.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    statement.serial_consistency_level = ConsistencyLevel.LOCAL_SERIAL
    return statement


def drivers_bind(statement: PreparedStatement, layout: tuple[str, ...], key: str, event_ms: int,
                 created_ms: int | None, values: list[bytes]) -> Any:
    params: list[Any] = []
    for value in values:
        shared = {"entity_key": key, "value": value, "event_ts": event_ms, "created_ts": created_ms}
        params += [shared[name] for name in layout]
    return statement.bind(params)


rounds = st.tuples(st.sampled_from([INSERT_LAYOUT, UPDATE_OLDER_LAYOUT]), st.integers(1, 5), st.text(max_size=40),
                   st.integers(-(2**62), 2**62), st.none() | st.integers(-(2**62), 2**62),
                   st.lists(st.binary(max_size=30), min_size=5, max_size=5))


@given(rounds)
def test_a_round_is_bound_to_the_bytes_the_drivers_bind_gives(case: tuple[Any, ...]) -> None:
    layout, features, key, event_ms, created_ms, values = case
    statement = prepared(layout, features)
    binder = RoundBinder(statement, layout, features)
    assert binder.fast
    ours = binder.bind(key, event_ms, created_ms, values[:features])
    theirs = drivers_bind(statement, layout, key, event_ms, created_ms, values[:features])
    assert ours.values == theirs.values
    assert ours.raw_values == theirs.raw_values
    assert ours.routing_key == theirs.routing_key == key.encode()
    for setting in ("keyspace", "consistency_level", "serial_consistency_level", "is_idempotent", "retry_policy",
                    "prepared_statement"):
        assert getattr(ours, setting) == getattr(theirs, setting), setting


@pytest.mark.parametrize("features", [2, 4])
def test_a_statement_whose_columns_are_not_the_layout_is_bound_by_the_driver(features: int) -> None:
    statement = prepared(UPDATE_OLDER_LAYOUT, 3)  # three features' columns, a binder told otherwise
    binder = RoundBinder(statement, UPDATE_OLDER_LAYOUT, features)
    assert not binder.fast
    if features == 2:  # fewer parameters than columns: the driver leaves the rest unset (protocol v4)
        bound = binder.bind("k", 5, None, [b"a", b"b"])
        assert bound.values == drivers_bind(statement, UPDATE_OLDER_LAYOUT, "k", 5, None, [b"a", b"b"]).values
        assert len(bound.values) == 15
    else:
        with pytest.raises(ValueError, match="Too many arguments"):
            binder.bind("k", 5, None, [b"a", b"b", b"c", b"d"])


def test_columns_under_an_encryption_policy_are_bound_by_the_driver() -> None:
    class Policy:
        def contains_column(self, _column: Any) -> bool:
            return False

    statement = prepared(INSERT_LAYOUT, 2, Policy())
    binder = RoundBinder(statement, INSERT_LAYOUT, 2)
    assert not binder.fast
    assert binder.bind("k", 5, 6, [b"a", b"b"]).values == drivers_bind(statement, INSERT_LAYOUT, "k", 5, 6,
                                                                       [b"a", b"b"]).values


def test_parameters_the_layout_does_not_foresee_get_the_drivers_checks() -> None:
    statement = prepared(UPDATE_OLDER_LAYOUT, 2)
    binder = RoundBinder(statement, UPDATE_OLDER_LAYOUT, 2)
    assert binder.fast
    with pytest.raises(ValueError, match="Too many arguments"):
        binder.bind("k", 5, None, [b"a", b"b", b"c"])
    short = binder.bind("k", 5, None, [b"a"])  # the driver leaves the rest unset (protocol v4)
    assert short.values == drivers_bind(statement, UPDATE_OLDER_LAYOUT, "k", 5, None, [b"a"]).values
    assert len(short.values) == 10
    null_value = binder.bind("k", 5, 6, [b"a", None])  # type: ignore[list-item]
    assert null_value.values == drivers_bind(statement, UPDATE_OLDER_LAYOUT, "k", 5, 6, [b"a", None]).values  # type: ignore[list-item]
    assert null_value.values[5] is None
