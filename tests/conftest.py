"""Shared fixtures. Services come from the project's local stack (stack/localstack.py).

The stack is started once per test session, on first use, and only the services this session
started are stopped at its end; a stack that was already up is reused and left running.
A test that needs a service fails (it is never skipped) when the service cannot be started.
"""

from __future__ import annotations

import gc
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import localstack
from tests.daemon import Daemon, Deployment
from tests.helpers import driver_view


def _native_clients_die_in_the_main_thread() -> None:
    # The test process makes and drops many librdkafka and Cassandra clients. Python's cyclic garbage
    # collector runs in whichever thread happens to allocate, and that can be librdkafka's own background
    # thread running an admin result callback: a Kafka handle collected there is destroyed from its own
    # thread, which crashes the process (confluent-kafka-python issues 1761, PR 2129). So automatic
    # collection is off here and garbage is collected between tests, in the main thread.
    gc.disable()

    # The driver's libev reactor has a known race between its watcher callbacks and a cluster shutdown
    # (fixed in the scylladb fork, not in cassandra-driver 3.30), and this process shuts clusters down
    # by the dozen. The asyncio reactor has no C code. The daemons under test run in their own processes
    # and keep the driver's default reactor, the one users run.
    from cassandra.cluster import Cluster
    from cassandra.io.asyncioreactor import AsyncioConnection

    Cluster.connection_class = AsyncioConnection


_native_clients_die_in_the_main_thread()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture(scope="session")
def stack() -> Iterator[localstack.Endpoints]:
    endpoints, started = localstack.up(["kafka", "cassandra"])
    yield endpoints
    if started:
        localstack.down(started)


@pytest.fixture(scope="session")
def registry_url(stack: localstack.Endpoints) -> Iterator[str]:
    endpoints, started = localstack.up(["registry"])
    yield endpoints.registry_url
    if started:
        localstack.down(started)


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:24]
    return f"{prefix}_{base}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(stack: localstack.Endpoints):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": stack.bootstrap_servers})


@pytest.fixture
def make_topic(
    request: pytest.FixtureRequest, stack: localstack.Endpoints, admin
) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; they are deleted afterwards."""
    from confluent_kafka.admin import NewTopic

    from tests.topics import create_topics

    created: list[str] = []

    def make(partitions: int = 1, suffix: str = "t") -> str:
        name = unique_name(request, suffix)
        create_topics(admin, [NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    yield make
    if created:
        for fut in admin.delete_topics(created).values():
            fut.result(timeout=30)


@pytest.fixture(scope="session")
def cql_session(stack: localstack.Endpoints):  # type: ignore[no-untyped-def]
    from cassandra.cluster import Cluster
    from cassandra.policies import ConstantReconnectionPolicy

    # The fault suite stops and restarts Cassandra: reconnect at once, not after the default's long backoff.
    # And notice a dead connection while idle (a heartbeat every second, not 30): the driver learns that its
    # pooled connection died only when it next uses it, so the first request after a restart failed
    # (ConnectionShutdown), and those of the next half second found the node marked down.
    cluster = Cluster([stack.cql_host], port=stack.cql_port, protocol_version=4,
                      reconnection_policy=ConstantReconnectionPolicy(0.5, None), idle_heartbeat_interval=1)
    session = cluster.connect()
    yield session
    cluster.shutdown()


def execute_when_up(session: Any, cql: str, timeout_s: float = 30.0) -> Any:
    """`cql`, sent again while no host takes it: the shared session may still be reconnecting to a node a
    test has just started again (up to its reconnection delay after the node answers)."""
    from cassandra.cluster import NoHostAvailable

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return session.execute(cql)
        except NoHostAvailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


@pytest.fixture
def keyspace(request: pytest.FixtureRequest, cql_session) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A uniquely named keyspace for one test, dropped afterwards."""
    name = unique_name(request, "ks")
    execute_when_up(
        cql_session,
        # IF NOT EXISTS: a request whose connection broke may have reached the node before it is sent again.
        f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}",
    )
    yield name
    execute_when_up(cql_session, f"DROP KEYSPACE IF EXISTS {name}")


# --------------------------------------------------------------------------- the daemon


@pytest.fixture
def make_deployment(request: pytest.FixtureRequest, stack: Any, keyspace: str, tmp_path: Path
                    ) -> Iterator[Callable[..., Deployment]]:
    """A daemon configuration with its own topics, and the view's table in the test's keyspace."""

    from consumer.cassandra.connection import CassandraOptions
    from consumer.cassandra.writer import CassandraStore

    made: list[Deployment] = []

    def make(prefix: str, **options: Any) -> Deployment:
        dep = Deployment(stack, unique_name(request, prefix), keyspace, tmp_path, **options)
        made.append(dep)
        dep.create_topics()
        dep.write_config()
        store = CassandraStore(CassandraOptions(hosts=(stack.cql_host,), port=stack.cql_port, keyspace=keyspace))
        store.create_schema([driver_view()], create_keyspace=False)
        store.close()
        return dep

    yield make
    for dep in made:
        dep.close()


@pytest.fixture
def reader(stack: Any, keyspace: str) -> Iterator[Any]:
    from consumer.cassandra.connection import CassandraOptions
    from consumer.cassandra.writer import CassandraStore

    store = CassandraStore(CassandraOptions(hosts=(stack.cql_host,), port=stack.cql_port, keyspace=keyspace))
    yield store
    store.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; whatever still runs at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop_quietly()


@pytest.fixture
def running() -> Iterator[list[Any]]:
    """Anything a test must undo whatever happens (a stopped service, a closed proxy)."""
    undo: list[Any] = []
    yield undo
    for action in reversed(undo):
        action()
