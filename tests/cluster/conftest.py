"""The cluster tier: three Cassandra 5.0 nodes and three Kafka brokers of stack/cluster.py, all real.

`pytest -m cluster` runs this tier alone, and `-m "not cluster"` leaves it out. The cluster is started
once per session (a cluster that already runs is reused and left running) and the members this
session started are stopped at its end. If the cluster cannot start, every test here fails with the
reason; none is skipped. After each test, whatever it stopped, killed or paused is brought back
(`cluster.heal`), so that the next test starts from a whole cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
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

    from tests.topics import create_topics

    made: list[str] = []

    def make(partitions: int = 3, **config: str) -> str:
        name = unique_name(request, "t")
        create_topics(kafka_admin, [NewTopic(name, num_partitions=partitions, replication_factor=3, config=config)])
        made.append(name)
        return name

    yield make
    if made:
        for future in kafka_admin.delete_topics(made).values():
            future.result(timeout=30)


# --------------------------------------------------------------------------- the daemon on the cluster


@pytest.fixture
def cluster_keyspace(make_keyspace: Callable[[], str]) -> str:
    """One RF 3 keyspace (NetworkTopologyStrategy in the cluster's data center) for the test's daemons."""
    return make_keyspace()


def cluster_options(cluster: local_cluster.ClusterEndpoints, keyspace: str) -> Any:
    from consumer.cassandra.connection import CassandraOptions

    return CassandraOptions(hosts=tuple(cluster.cql_hosts), port=cluster.cql_port, keyspace=keyspace,
                            local_dc=cluster.datacenter, consistency="LOCAL_QUORUM", serial_consistency="LOCAL_SERIAL")


@pytest.fixture
def make_cluster_deployment(request: pytest.FixtureRequest, cluster: local_cluster.ClusterEndpoints, cql: Any,
                            cluster_keyspace: str, kafka_admin: Any, tmp_path: Path
                            ) -> Iterator[Callable[..., Any]]:
    """A daemon configuration for the cluster (tests/cluster/support.daemon_config): its topics with three
    replicas and min.insync.replicas=2 (the dead-letter topic too), and the view's table in the test's RF 3
    keyspace, agreed on by all three nodes. The topics are deleted afterwards."""
    from consumer.cassandra.writer import CassandraStore
    from tests.cluster.support import daemon_config
    from tests.daemon import Deployment
    from tests.helpers import driver_view

    made: list[Deployment] = []

    def make(prefix: str, leaders: tuple[list[list[int]], list[int]] | None = None, **options: Any) -> Deployment:
        """`leaders`: (the topic's replicas per partition, the dead-letter topic's), the first of each list
        its preferred leader; by default the brokers spread them."""
        extra = daemon_config(cluster)
        for section, values in options.pop("extra", {}).items():
            extra.setdefault(section, {}).update(values)
        dep = Deployment(cluster, unique_name(request, prefix), cluster_keyspace, tmp_path, replicas=3,
                         topic_config={"min.insync.replicas": "2"}, extra=extra, **options)
        made.append(dep)
        if leaders is None:
            dep.create_topics()
        else:
            from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # re-exported

            from tests.topics import create_topics

            # (confluent-kafka 2.16 wants the partition count along with the assignment.)
            topics = [NewTopic(dep.topic, len(leaders[0]), replica_assignment=leaders[0], config=dep.topic_config),
                      NewTopic(dep.dead_letter_topic, 1, replica_assignment=[leaders[1]], config=dep.topic_config)]
            create_topics(kafka_admin, topics)
        dep.write_config()
        if len(made) == 1:
            store = CassandraStore(cluster_options(cluster, cluster_keyspace))
            try:
                store.create_schema([driver_view()], create_keyspace=False)
            finally:
                store.close()
            wait_for_schema_agreement(cql)
        return dep

    yield make
    for dep in made:
        dep.close()
    topics = [t for dep in made for t in (dep.topic, dep.dead_letter_topic)]
    if topics:
        for future in kafka_admin.delete_topics(topics).values():
            with contextlib.suppress(Exception):  # best effort: the cluster is healed, but may be slow
                future.result(timeout=30)


@pytest.fixture
def cluster_reader(cluster: local_cluster.ClusterEndpoints, cluster_keyspace: str) -> Iterator[Any]:
    """Reads rows back as Feast would, at LOCAL_QUORUM: what a write acknowledged holds must be there."""
    from consumer.cassandra.writer import CassandraStore

    store = CassandraStore(cluster_options(cluster, cluster_keyspace))
    yield store
    store.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.cluster.support import REPORT

    if not REPORT:
        return
    terminalreporter.section("cluster tier figures")
    header = ("test", "events", "faults", "CAS timeouts", "other errors re-sent", "pauses (s)", "lost", "regressed",
              "wrong", "poison", "dead letters", "seconds")
    terminalreporter.write_line(" | ".join(header))
    for f in REPORT:
        v = f.verdict
        others = ", ".join(f"{k} {n}" for k, n in f.errors.items() if k != "WriteTimeout/CAS") or "-"
        pauses = f"{len(f.pauses)}" + (f" ({', '.join(f'{p:.1f}' for p in f.pauses)})" if f.pauses else "")
        letters = f"{v.dead_letters} ({'complete' if v.dead_letters_complete else 'INCOMPLETE'}"
        letters += f", {f.letters} messages)" if f.letters != v.dead_letters else ")"
        terminalreporter.write_line(" | ".join(str(x) for x in (
            v.test, v.events, f"{f.fault} ({v.faults})", f.cas_timeouts, others, pauses, v.lost, v.regressed,
            v.wrong, v.poison, letters, f"{f.seconds:.0f}")))
    path = os.environ.get("CLUSTER_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            for f in REPORT:
                fh.write(json.dumps(f.row()) + "\n")
