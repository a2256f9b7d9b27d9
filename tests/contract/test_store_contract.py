"""One contract, two stores: the in-memory model (tests/fakes.py) and the real Cassandra adapter.

The model states the guard's rule in one line; Cassandra reaches the same state through lightweight
transactions, several rounds and a cache. Every check here runs against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.schema import table_name
from consumer.cassandra.statements import Statements
from consumer.cassandra.writer import CassandraStore
from consumer.core.errors import StoreMisconfigured
from consumer.core.guard import NULL_MS
from consumer.core.store import EncodedRows, RowStatus, Store, StoredCell
from consumer.core.views import FeatureView
from tests.fakes import FakeStore
from tests.helpers import driver_view

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
Seeder = Callable[[FeatureView, str, str, StoredCell], None]


@pytest.fixture(params=["fake", pytest.param("cassandra", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[Store, Seeder]]:
    if request.param == "fake":
        fake = FakeStore()
        yield fake, fake.seed
        return
    keyspace = request.getfixturevalue("keyspace")
    endpoints = request.getfixturevalue("stack")
    store = CassandraStore(CassandraOptions(hosts=(endpoints.cql_host,), port=endpoints.cql_port,
                                             keyspace=keyspace, consistency="ONE", serial_consistency="SERIAL"))
    store.create_schema([driver_view()], create_keyspace=False)

    def seed(view: FeatureView, key: str, feature: str, cell: StoredCell) -> None:
        store.session.execute(
            f"INSERT INTO {table_name(keyspace, view)} (entity_key, feature_name, value, event_ts, created_ts) "
            "VALUES (%s, %s, %s, %s, %s)",
            (key, feature, cell.value, None if cell.event_ms == NULL_MS else cell.event_ms, cell.created_ms))

    yield store, seed
    store.close()


def rows_of(writes: list[tuple[str, int, int | None, bytes]]) -> EncodedRows:
    """One row per (entity key, event ms, created ms or None, value) - the same value for every feature."""
    return EncodedRows(
        [w[0] for w in writes],
        np.array([w[1] for w in writes], dtype=np.int64),
        np.array([NULL_MS if w[2] is None else w[2] for w in writes], dtype=np.int64),
        {f: [w[3] for w in writes] for f in FEATURES},
    )


def cells(store: Store, key: str) -> dict[str, tuple[bytes, int, int | None]]:
    return {f: (c.value, c.event_ms, c.created_ms) for f, c in store.read(driver_view(), key).items()}


def test_first_write_then_read_back(backend: tuple[Store, Seeder]) -> None:
    store, _ = backend
    report = store.write(driver_view(), rows_of([("k1", 1000, 900, b"v1"), ("k2", 2000, None, b"v2")]))
    assert report.statuses == [RowStatus.APPLIED, RowStatus.APPLIED]
    assert cells(store, "k1") == {f: (b"v1", 1000, 900) for f in FEATURES}
    assert cells(store, "k2") == {f: (b"v2", 2000, None) for f in FEATURES}


@pytest.mark.parametrize(("second", "winner", "status"), [
    ((2000, None, b"new"), b"new", RowStatus.APPLIED),   # newer event wins
    ((500, 9999, b"old"), b"first", RowStatus.STALE),    # older event loses, whatever its created time
    ((1000, 901, b"tie+"), b"tie+", RowStatus.APPLIED),  # same event, newer created wins
    ((1000, 899, b"tie-"), b"first", RowStatus.STALE),   # same event, older created loses
    ((1000, None, b"nul"), b"first", RowStatus.STALE),   # a missing created time is the oldest
    ((1000, 900, b"same"), b"same", RowStatus.APPLIED),  # a full tie: the later write wins
])
def test_the_guard_rule(backend: tuple[Store, Seeder], second: tuple[int, int | None, bytes],
                        winner: bytes, status: RowStatus) -> None:
    store, _ = backend
    view = driver_view()
    store.write(view, rows_of([("k", 1000, 900, b"first")]))
    report = store.write(view, rows_of([("k", *second)]))
    assert report.statuses == [status]
    assert {v for v, _, _ in cells(store, "k").values()} == {winner}


def test_null_created_stored_loses_to_a_created_time_on_the_same_event(backend: tuple[Store, Seeder]) -> None:
    store, _ = backend
    store.write(driver_view(), rows_of([("k", 1000, None, b"a")]))
    assert store.write(driver_view(), rows_of([("k", 1000, 5, b"b")])).statuses == [RowStatus.APPLIED]
    assert {c[0] for c in cells(store, "k").values()} == {b"b"}


def test_resending_a_write_is_harmless(backend: tuple[Store, Seeder]) -> None:
    store, _ = backend
    for _ in range(3):
        store.write(driver_view(), rows_of([("k", 1000, 7, b"x")]))
    assert cells(store, "k") == {f: (b"x", 1000, 7) for f in FEATURES}


def test_rows_written_blindly_with_mixed_versions(backend: tuple[Store, Seeder]) -> None:
    """Rows not written by the guard (Feast's materialize) may differ per feature; each is judged alone."""
    store, seed = backend
    view = driver_view()
    seed(view, "k", "conv_rate", StoredCell(b"newer", 5000, None))
    seed(view, "k", "acc_rate", StoredCell(b"older", 100, None))  # avg_daily_trips: no row at all
    report = store.write(view, rows_of([("k", 1000, None, b"ours")]))
    assert report.statuses == [RowStatus.PARTIAL]
    assert cells(store, "k") == {
        "conv_rate": (b"newer", 5000, None),
        "acc_rate": (b"ours", 1000, None),
        "avg_daily_trips": (b"ours", 1000, None),
    }


def test_rows_written_without_an_event_time_are_overwritten(backend: tuple[Store, Seeder]) -> None:
    """A row some other writer left without event_ts (NULL_MS seeds a null) loses to any version."""
    store, seed = backend
    view = driver_view()
    seed(view, "k", "conv_rate", StoredCell(b"no-time", NULL_MS, None))
    seed(view, "k", "acc_rate", StoredCell(b"newer", 5000, None))
    seed(view, "k", "avg_daily_trips", StoredCell(b"no-time", NULL_MS, 7))
    report = store.write(view, rows_of([("k", 1000, None, b"ours")]))
    assert report.statuses == [RowStatus.PARTIAL]
    assert cells(store, "k") == {
        "conv_rate": (b"ours", 1000, None),
        "acc_rate": (b"newer", 5000, None),
        "avg_daily_trips": (b"ours", 1000, None),
    }


write_strategy = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.one_of(st.none(), st.integers(0, 2)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(write_strategy, min_size=1, max_size=3, unique_by=lambda w: w[0]),
                        min_size=1, max_size=4))
def test_any_sequence_of_batches_ends_at_the_newest_version(
    backend: tuple[Store, Seeder], batches: list[list[tuple[str, int, int | None]]]
) -> None:
    store, _ = backend
    view = driver_view()
    run = f"{uuid.uuid4().hex[:8]}:"  # fresh keys per example: the backend outlives the examples
    expected: dict[str, tuple[tuple[int, int], bytes]] = {}
    for n, batch in enumerate(batches):
        writes = [(run + key, event, created, f"{n}:{key}".encode()) for key, event, created in batch]
        store.write(view, rows_of(writes))
        for key, event, created, value in writes:
            version = (event, NULL_MS if created is None else created)
            if key not in expected or version >= expected[key][0]:
                expected[key] = (version, value)
    for key, (version, value) in expected.items():
        got = cells(store, key)
        assert {c[0] for c in got.values()} == {value}, key
        assert {(c[1], NULL_MS if c[2] is None else c[2]) for c in got.values()} == {version}


@pytest.mark.integration
def test_a_missing_table_stops_the_writer_with_a_configuration_error(stack, keyspace) -> None:  # type: ignore[no-untyped-def]
    """Classified by the driver's error type and its schema metadata, not by the message's words."""
    store = CassandraStore(CassandraOptions(hosts=(stack.cql_host,), port=stack.cql_port, keyspace=keyspace))
    try:
        with pytest.raises(StoreMisconfigured, match=r'"feast_demo_driver_hourly_stats" does not exist; run '
                                                     r"`feature-consumer init-schema`"):
            store.write(driver_view(), rows_of([("k1", 1000, None, b"v1")]))
        store.create_schema([driver_view()], create_keyspace=False)
        assert store.write(driver_view(), rows_of([("k1", 1000, None, b"v1")])).statuses == [RowStatus.APPLIED]
    finally:
        store.close()


@pytest.mark.integration
def test_the_common_rounds_are_bound_without_the_drivers_bind(stack, keyspace) -> None:  # type: ignore[no-untyped-def]
    """Cassandra names a batch's bind markers after their columns, as the round binder's layouts expect;
    were it otherwise, every round would quietly fall back to the driver's slower `bind`."""
    store = CassandraStore(CassandraOptions(hosts=(stack.cql_host,), port=stack.cql_port, keyspace=keyspace))
    try:
        store.create_schema([driver_view()], create_keyspace=False)
        statements = Statements.prepare(store.session, keyspace, driver_view())
        assert statements.insert_all.fast and statements.update_older_all.fast
    finally:
        store.close()
