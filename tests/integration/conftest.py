"""Fixtures shared by the integration tests that run the daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.cassandra_sink import CassandraStore
from consumer.config import CassandraSettings
from tests.conftest import unique_name
from tests.daemon import Daemon, Deployment
from tests.helpers import driver_view


@pytest.fixture
def make_deployment(request: pytest.FixtureRequest, stack: Any, keyspace: str, tmp_path: Path
                    ) -> Callable[..., Deployment]:
    """A daemon configuration with its own topics, and the view's table in the test's keyspace."""

    def make(prefix: str, **options: Any) -> Deployment:
        dep = Deployment(stack, unique_name(request, prefix), keyspace, tmp_path, **options)
        dep.create_topics()
        dep.write_config()
        store = CassandraStore(CassandraSettings(hosts=[stack.cql_host], port=stack.cql_port, keyspace=keyspace))
        store.create_schema([driver_view()], create_keyspace=False)
        store.close()
        return dep

    return make


@pytest.fixture
def reader(stack: Any, keyspace: str) -> Iterator[CassandraStore]:
    store = CassandraStore(CassandraSettings(hosts=[stack.cql_host], port=stack.cql_port, keyspace=keyspace))
    yield store
    store.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; whatever still runs at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop_quietly()
