"""A guarded write's objects go when it is answered, not in a later cyclic collection.

cassandra-driver keeps each request's cancelled timer, which refers back to the request: unless the
writer breaks that cycle, every write leaves a few dozen objects for the cyclic collector, whose full
collections then stall the loop (consumer/cassandra/window.py, when_answered). This fails if the writer
or a new driver version brings the cycle back.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest

from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.writer import CassandraStore
from consumer.core.guard import NULL_MS
from consumer.core.store import EncodedRows, RowStatus
from tests.helpers import driver_view

pytestmark = pytest.mark.integration

ROWS = 600


@pytest.fixture
def store(stack, keyspace: str) -> Iterator[CassandraStore]:  # type: ignore[no-untyped-def]
    store = CassandraStore(CassandraOptions(hosts=(stack.cql_host,), port=stack.cql_port, keyspace=keyspace))
    store.create_schema([driver_view()], create_keyspace=False)
    yield store
    store.close()


def rows(first: int, count: int, event_ms: int) -> EncodedRows:
    features = [f.name for f in driver_view().features]
    return EncodedRows([f"driver-{i}" for i in range(first, first + count)],
                       np.full(count, event_ms, dtype=np.int64), np.full(count, NULL_MS, dtype=np.int64),
                       {f: [b"\x00"] * count for f in features})


def test_answered_writes_leave_no_cyclic_garbage(store: CassandraStore) -> None:
    view = driver_view()
    store.write(view, rows(0, 50, 1000))  # connect and prepare first: their objects are not the subject
    was_enabled = gc.isenabled()
    gc.disable()
    gc.collect()
    try:
        statuses = []
        for first in range(0, ROWS, 100):  # guarded inserts, then guarded updates of the same rows
            statuses += store.write(view, rows(first, 100, 2000)).statuses
            statuses += store.write(view, rows(first, 100, 3000)).statuses
        unreachable = gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert statuses == [RowStatus.APPLIED] * (2 * ROWS)
    # With the cycle, each write left dozens of objects (75,000 here, with the asyncio reactor the tests
    # use). A schema metadata refresh the driver runs on its own after create_schema leaves about a
    # hundred, once: fewer than one object per write is the mark.
    assert unreachable < 2 * ROWS, f"{unreachable} unreachable objects after {2 * ROWS} guarded writes"
