"""The cluster tier: three Cassandra 5.0 nodes and three Kafka brokers of stack/cluster.py, all real.

`pytest -m cluster` runs this tier alone, and `-m "not cluster"` leaves it out. The cluster is started
once per session (a cluster that already runs is reused and left running) and the members this
session started are stopped at its end. If the cluster cannot start, every test here fails with the
reason; none is skipped. After each test, whatever it stopped, killed or paused is brought back
(`cluster.heal`), so that the next test starts from a whole cluster.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import cluster as local_cluster
from stack.localstack import StackError

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test of this folder is in the `cluster` tier, marked in its module or not.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster_endpoints() -> Iterator[local_cluster.ClusterEndpoints]:
    try:
        endpoints, started = local_cluster.up(echo=print)
    except StackError as exc:
        pytest.fail(f"the local cluster could not be started: {exc}", pytrace=False)
    yield endpoints
    if started:
        local_cluster.down(started, echo=print)


@pytest.fixture
def cluster(cluster_endpoints: local_cluster.ClusterEndpoints) -> Iterator[local_cluster.ClusterEndpoints]:
    """The whole cluster; members the test stopped, killed or paused are brought back afterwards."""
    yield cluster_endpoints
    try:
        local_cluster.heal()
    except StackError as exc:
        pytest.fail(f"the cluster could not be brought back after the test: {exc}", pytrace=False)


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:24]
    return f"{prefix}_{base}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cql(cluster: local_cluster.ClusterEndpoints) -> Iterator[Any]:
    """A driver session over all three nodes, as the daemon's would be: token-aware in the local DC,
    reconnecting to a node every half second after it comes back."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import ConstantReconnectionPolicy, DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cluster.datacenter)),
        request_timeout=15,
    )
    driver = Cluster(list(cluster.cql_hosts), port=cluster.cql_port, protocol_version=5,
                     execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                     reconnection_policy=ConstantReconnectionPolicy(0.5, None))
    session = driver.connect()
    yield session
    driver.shutdown()


def wait_for_schema_agreement(session: Any, timeout: float = 60) -> None:
    """Until every node the driver holds up reports the same schema version (asked of each node itself:
    the driver's own agreement check reads one node's view of its peers, and gives up after 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        versions = {host.address: session.execute("SELECT schema_version FROM system.local", host=host).one()[0]
                    for host in session.cluster.metadata.all_hosts() if host.is_up}
        if len(set(versions.values())) == 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no schema agreement within {timeout:.0f}s: {versions}")
        time.sleep(0.2)


@pytest.fixture
def ddl(cql: Any) -> Callable[[str], None]:
    """Run a schema change and wait until all nodes have it (the next statement may go to any of them)."""

    def run(statement: str) -> None:
        cql.execute(statement)
        wait_for_schema_agreement(cql)

    return run


@pytest.fixture
def make_keyspace(request: pytest.FixtureRequest, cql: Any, ddl: Callable[[str], None]
                  ) -> Iterator[Callable[[], str]]:
    """Keyspaces replicated three times in the cluster's data center; dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name = unique_name(request, "ks")
        dc = local_cluster.DATACENTER
        ddl(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 3}}")
        made.append(name)
        return name

    yield make
    for name in made:
        cql.execute(f"DROP KEYSPACE IF EXISTS {name}")


@pytest.fixture
def kafka_admin(cluster: local_cluster.ClusterEndpoints) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": cluster.bootstrap_servers})


@pytest.fixture
def make_topic(request: pytest.FixtureRequest, kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Topics with three replicas (min.insync.replicas=2 from the brokers' default); deleted afterwards."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported, not in __all__

    made: list[str] = []

    def make(partitions: int = 3, **config: str) -> str:
        name = unique_name(request, "t")
        futures = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=3,
                                                      config=config)])
        futures[name].result(timeout=30)
        made.append(name)
        return name

    yield make
    if made:
        for future in kafka_admin.delete_topics(made).values():
            future.result(timeout=30)
