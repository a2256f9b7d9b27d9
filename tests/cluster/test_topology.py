"""The cluster is what users run against: three Cassandra nodes (RF 3, LOCAL_QUORUM writes, LOCAL_SERIAL
Paxos) and three Kafka brokers (RF 3, min.insync.replicas=2), and it behaves so when members fail.

Real services, no mocks; members are killed with SIGKILL or stopped with SIGTERM and started again with
their data kept.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cassandra import ConsistencyLevel, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.query import SimpleStatement
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # re-exported, not in __all__

from stack import cluster as local_cluster
from tests.topics import unknown_to

pytestmark = pytest.mark.cluster

QUORUM, SERIAL = ConsistencyLevel.LOCAL_QUORUM, ConsistencyLevel.LOCAL_SERIAL


def test_three_cassandra_nodes_are_up_and_an_rf3_keyspace_spans_them(
    cluster: local_cluster.ClusterEndpoints, cql: Any, make_keyspace: Callable[[], str],
    ddl: Callable[[str], None],
) -> None:
    hosts = sorted(cluster.cql_hosts)
    for member in local_cluster.CASSANDRA_MEMBERS:
        with local_cluster.cql_session(member) as node:
            gossip = {str(r.address): r for r in node.execute(
                "SELECT address, status_with_port, dc FROM system_views.gossip_info")}
            assert sorted(gossip) == hosts, member
            assert all(r.status_with_port.startswith("NORMAL") and r.dc == cluster.datacenter
                       for r in gossip.values()), (member, gossip)
            local = node.execute("SELECT data_center, release_version FROM system.local").one()
            assert (local.data_center, local.release_version.split(".")[0]) == (cluster.datacenter, "5")
    driver_hosts = cql.cluster.metadata.all_hosts()
    assert sorted(h.address for h in driver_hosts) == hosts
    assert all(h.is_up and h.datacenter == cluster.datacenter for h in driver_hosts)

    ks = make_keyspace()
    replication = cql.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                              (ks,)).one().replication
    assert replication == {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy",
                           cluster.datacenter: "3"}
    ddl(f"CREATE TABLE {ks}.t (k text PRIMARY KEY, v int)")
    cql.execute(SimpleStatement(f"INSERT INTO {ks}.t (k, v) VALUES ('a', 1)", consistency_level=ConsistencyLevel.ALL))
    assert len(cql.cluster.metadata.get_replicas(ks, b"a")) == 3
    # A read at ALL through each node as coordinator: every node reaches all three replicas.
    for member in local_cluster.CASSANDRA_MEMBERS:
        with local_cluster.cql_session(member) as node:
            row = node.execute(SimpleStatement(f"SELECT v FROM {ks}.t WHERE k = 'a'",
                                               consistency_level=ConsistencyLevel.ALL)).one()
            assert row.v == 1, member


def _unavailable(exc: BaseException) -> bool:
    """Unavailable from the coordinator, or the driver's NoHostAvailable after it found no other host to
    retry on (its default retry policy tries the next host once after an Unavailable)."""
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, NoHostAvailable) and any(isinstance(e, Unavailable) for e in exc.errors.values())


def test_conditional_writes_survive_one_node_down_and_are_refused_with_two(
    cluster: local_cluster.ClusterEndpoints, cql: Any, make_keyspace: Callable[[], str],
    ddl: Callable[[str], None],
) -> None:
    ks = make_keyspace()
    ddl(f"CREATE TABLE {ks}.t (k text PRIMARY KEY, v int)")
    insert = cql.prepare(f"INSERT INTO {ks}.t (k, v) VALUES (?, ?) IF NOT EXISTS")
    insert.consistency_level, insert.serial_consistency_level = QUORUM, SERIAL
    read = cql.prepare(f"SELECT v FROM {ks}.t WHERE k = ?")
    read.consistency_level = SERIAL
    assert cql.execute(insert, ("before", 0)).was_applied

    local_cluster.kill("cassandra-3")
    # Two of three replicas: the Paxos quorum is there, the write applies, and the guard still refuses
    # a second write of the same key.
    assert cql.execute(insert, ("one-down", 1)).was_applied
    refused = cql.execute(insert, ("one-down", 2))
    assert not refused.was_applied and refused.one().v == 1
    assert cql.execute(read, ("one-down",)).one().v == 1

    local_cluster.stop("cassandra-2")
    # One replica left. A node stopped with SIGTERM announces its shutdown, a killed one is convicted by
    # the failure detector some seconds later; until then the coordinator still tries it, and a write
    # times out instead of being refused up front.
    timeouts, deadline, error = 0, time.monotonic() + 60, None
    while error is None:
        try:
            result = cql.execute(insert, (f"two-down-{uuid.uuid4().hex[:6]}", 2))
        except WriteTimeout:
            timeouts += 1
        except (Unavailable, NoHostAvailable) as exc:
            error = exc
        else:
            pytest.fail(f"a conditional write applied with two of three replicas down: {result.one()}")
        assert time.monotonic() < deadline, f"no Unavailable within 60s ({timeouts} write timeouts)"
    assert _unavailable(error), repr(error)

    took = local_cluster.start("cassandra-2", "cassandra-3")
    print(f"cassandra-2, -3 back in {max(took.values()):.1f}s; {timeouts} write timeouts before Unavailable")
    _wait_until(lambda: all(h.is_up for h in cql.cluster.metadata.all_hosts()), 30, "the driver sees 3 hosts up")
    assert cql.execute(insert, ("after", 3)).was_applied
    assert not cql.execute(insert, ("one-down", 4)).was_applied
    for member in local_cluster.CASSANDRA_MEMBERS:
        with local_cluster.cql_session(member) as node:
            rows = node.execute(SimpleStatement(f"SELECT k, v FROM {ks}.t WHERE k IN ('before', 'one-down', 'after')",
                                                consistency_level=ConsistencyLevel.ALL))
            assert sorted((r.k, r.v) for r in rows) == [("after", 3), ("before", 0), ("one-down", 1)], member


def test_a_made_topic_is_known_to_every_broker_and_a_missing_one_to_none(
    cluster: local_cluster.ClusterEndpoints, kafka_admin: Any, make_topic: Callable[..., str]
) -> None:
    # CreateTopics is answered before every broker has replayed the new topic; tests that go on at once
    # (describe its configs, produce to it) must not meet a broker that has not.
    brokers = sorted(kafka_admin.list_topics(timeout=10).brokers)
    assert brokers == [m.broker_id for m in local_cluster.KAFKA_MEMBERS]
    missing = f"never_made_{uuid.uuid4().hex[:8]}"
    # Without the wait, about one check in eight met a broker that did not know its topic yet, and this
    # test failed two runs in three.
    for _ in range(10):
        topic = make_topic(partitions=3)
        for broker in brokers:
            assert unknown_to(kafka_admin, broker, [topic, missing]) == [missing], broker


def test_acks_all_produces_go_on_with_one_broker_killed_and_leadership_moves(
    cluster: local_cluster.ClusterEndpoints, kafka_admin: Any, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=3)
    config = kafka_admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    described = next(iter(config.values())).result(timeout=30)
    assert described["min.insync.replicas"].value == "2"

    def partitions() -> list[local_cluster.PartitionState]:
        return local_cluster.kafka_partitions(topic, kafka_admin)

    _wait_until(lambda: all(len(p.isr) == 3 for p in partitions()), 30, "full ISRs")
    states = partitions()
    assert all(len(p.replicas) == 3 for p in states), states

    errors: list[str] = []
    delivered: list[bytes] = []
    latencies: list[float] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append(msg.value())
            latencies.append(msg.latency() or 0.0)

    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5, "delivery.timeout.ms": 60_000})
    sent: list[bytes] = []

    def produce(count: int) -> None:
        for _ in range(count):
            value = f"m{len(sent)}".encode()
            producer.produce(topic, value=value, key=str(len(sent) % 30).encode(), on_delivery=on_delivery)
            sent.append(value)
            producer.poll(0)

    produce(300)
    assert producer.flush(30) == 0 and not errors

    victim_id = next(p.leader for p in states if p.partition == 0)
    victim = f"kafka-{victim_id}"
    local_cluster.kill(victim)
    killed_at = time.monotonic()
    # Keep producing while the controller fences the dead broker and elects new leaders.
    moved_after = None
    while moved_after is None:
        produce(20)
        producer.poll(0.1)
        now = partitions()
        if all(p.leader != victim_id and victim_id not in p.isr for p in now):
            moved_after = time.monotonic() - killed_at
        assert time.monotonic() - killed_at < 60, f"leadership did not move off {victim} in 60s: {now}"
    produce(300)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    after = partitions()
    assert all(p.leader != victim_id and len(p.isr) == 2 and victim_id not in p.isr for p in after), after
    assert sorted(delivered) == sorted(sent)

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": f"{topic}-check",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        value = None if msg is None or msg.error() is not None else msg.value()
        if value is not None:
            seen.append(value)
    consumer.close()
    assert sorted(seen) == sorted(sent)

    took = local_cluster.start(victim)  # ready = unfenced and back in the ISR of all its partitions
    assert all(victim_id in p.isr for p in partitions())
    # ...as each broker tells it, not only the one the readiness check or this test's client happened to ask
    # (asked again only when a broker gave no answer at all).
    brokers = [m.broker_id for m in local_cluster.KAFKA_MEMBERS]
    views = local_cluster.broker_views()
    for _ in range(3):
        if len(views) == len(brokers):
            break
        views = local_cluster.broker_views()
    assert local_cluster.in_sync_everywhere(victim_id, views, brokers) is None
    print(f"{len(sent)} records, none lost; leadership moved {moved_after:.1f}s after the kill; slowest delivery "
          f"{max(latencies):.1f}s; {victim} back in the ISRs {took[victim]:.1f}s after its start")


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.5)
