"""The local stack's failure modes end with a message that says what and what to do, never a hang."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from stack import cluster, localstack


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STACK_CLUSTER_DIR", str(tmp_path / "cluster-state"))
    for name in cluster.ClusterPorts.ENV.values():
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "state"


def test_ports_come_from_the_environment() -> None:
    ports = localstack.Ports.from_env({"STACK_KAFKA_PORT": "19092", "STACK_CQL_PORT": "19042"})
    assert (ports.kafka, ports.cql, ports.registry) == (19092, 19042, 8081)
    assert localstack.Endpoints.for_ports(ports).bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize("raw", ["abc", "0", "70000"])
def test_a_bad_port_names_the_variable(raw: str) -> None:
    with pytest.raises(localstack.StackError, match="STACK_CQL_PORT"):
        localstack.Ports.from_env({"STACK_CQL_PORT": raw})


def test_a_taken_port_names_the_service_port_and_variable() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(localstack.StackError) as err:
            localstack._check_ports_free("kafka", [("STACK_KAFKA_PORT", port)])
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "STACK_KAFKA_PORT" in message and "kafka" in message


def test_up_refuses_a_taken_port_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("STACK_REGISTRY_PORT", str(port))
        with pytest.raises(localstack.StackError, match=f"port 127.0.0.1:{port} is already in use"):
            localstack.up(["registry"], echo=lambda _: None)


def test_missing_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(localstack.StackError, match=r"java was not found.*Java 17"):
        localstack._require_java()


def test_missing_maven_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(localstack.StackError, match=r"mvn was not found.*Maven"):
        localstack._require_maven()


def test_an_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(localstack.StackError, match="Java 11 found"):
        localstack._require_java()


def test_a_service_that_never_answers_is_stopped_with_a_message(private_state_dir: Path) -> None:
    pid = localstack._spawn("kafka", [sys.executable, "-c", "import time; time.sleep(60)"], cwd=Path.cwd())
    start = time.monotonic()
    with pytest.raises(localstack.StackError, match=r"did not become ready within 1s.*STACK_READY_TIMEOUT"):
        localstack._wait_ready("kafka", pid, lambda: False, timeout=1, log=private_state_dir / "kafka.log")
    assert time.monotonic() - start < 10
    assert not localstack._alive(pid)


def test_a_service_that_dies_during_start_up_shows_its_log(private_state_dir: Path) -> None:
    cmd = [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"]
    pid = localstack._spawn("cassandra", cmd, cwd=Path.cwd())
    log = private_state_dir / "cassandra" / "console.log"
    with pytest.raises(localstack.StackError, match=r"(?s)exited during start-up.*boom: bad config"):
        localstack._wait_ready("cassandra", pid, lambda: False, timeout=30, log=log)


def test_status_reports_nothing_running_in_an_empty_state_dir() -> None:
    report = localstack.status()
    assert set(report) == {"kafka", "cassandra", "registry"}
    assert not any(info["running"] for info in report.values())


def test_a_resolved_classpath_is_reused_until_the_pom_changes_or_a_jar_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    pom, jar = tmp_path / "pom.xml", tmp_path / "a.jar"
    pom.write_text("<project/>")
    jar.write_text("")
    out = tmp_path / "kafka.classpath"
    out.write_text(str(jar))
    monkeypatch.setattr(localstack, "POM", pom)
    assert localstack._cached_classpath(out) == [str(jar)]
    os.utime(pom, (time.time() + 10, time.time() + 10))  # the pom edited after the last resolution
    assert localstack._cached_classpath(out) is None
    os.utime(pom, (time.time() - 10, time.time() - 10))
    jar.unlink()  # Maven's cache cleaned
    assert localstack._cached_classpath(out) is None
    assert localstack._cached_classpath(tmp_path / "never-resolved.classpath") is None


# --------------------------------------------------------------------------- the three-node cluster


def test_cluster_ports_default_beside_the_single_node_stack() -> None:
    ports = cluster.ClusterPorts.from_env({})
    single = localstack.Ports.from_env({})
    assert [ports.broker_port(n) for n in (1, 2, 3)] == [19092, 19093, 19094]
    assert [ports.controller_port(n) for n in (1, 2, 3)] == [19192, 19193, 19194]
    assert (ports.cql, ports.cassandra_storage) == (9142, 7100)
    taken_by_single = {single.kafka, single.kafka_controller, single.cql, single.cassandra_storage, single.registry}
    cluster_ports = {port for m in cluster.MEMBERS for _, _, port in ports.of(m)}
    assert not taken_by_single & cluster_ports


def test_cluster_ports_come_from_the_environment() -> None:
    ports = cluster.ClusterPorts.from_env({"STACK_CLUSTER_KAFKA_PORT": "29092", "STACK_CLUSTER_CQL_PORT": "29042"})
    assert ports.broker_port(3) == 29094 and ports.cql == 29042 and ports.kafka_controller == 19192
    endpoints = cluster.ClusterEndpoints.for_ports(ports)
    assert endpoints.bootstrap_servers == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    assert endpoints.broker("kafka-2") == "127.0.0.1:29093"
    assert endpoints.cql_hosts == ("127.0.0.1", "127.0.0.2", "127.0.0.3") and endpoints.cql_host == "127.0.0.1"
    assert (endpoints.cql_port, endpoints.datacenter) == (29042, "datacenter1")


@pytest.mark.parametrize(("env", "message"), [
    ({"STACK_CLUSTER_CQL_PORT": "abc"}, r"STACK_CLUSTER_CQL_PORT='abc' is not a port number"),
    ({"STACK_CLUSTER_CQL_PORT": "0"}, r"STACK_CLUSTER_CQL_PORT=0: ports 0 must lie within"),
    ({"STACK_CLUSTER_KAFKA_PORT": "65534"}, r"STACK_CLUSTER_KAFKA_PORT=65534: ports 65534\.\.65536"),
    # Broker 2 and the first controller would share 19093.
    ({"STACK_CLUSTER_KAFKA_CONTROLLER_PORT": "19093"},
     r"STACK_CLUSTER_KAFKA_CONTROLLER_PORT=19093 and STACK_CLUSTER_KAFKA_PORT=19092 both ask for port 19093"),
    ({"STACK_CLUSTER_CQL_PORT": "7100"}, r"STACK_CLUSTER_CASSANDRA_STORAGE_PORT=7100 and STACK_CLUSTER_CQL_PORT=7100"),
])
def test_bad_or_overlapping_cluster_ports_name_their_variables(env: dict[str, str], message: str) -> None:
    with pytest.raises(localstack.StackError, match=message):
        cluster.ClusterPorts.from_env(env)


def test_members_are_named_by_service_and_number() -> None:
    assert [m.name for m in cluster.MEMBERS] == [
        "cassandra-1", "cassandra-2", "cassandra-3", "kafka-1", "kafka-2", "kafka-3"]
    assert cluster.Member.parse(" Cassandra-2 ") == cluster.Member("cassandra", 2)
    assert cluster.Member.parse("cassandra-3").host == "127.0.0.3"
    kafka_2 = cluster.Member.parse("kafka-2")
    assert (kafka_2.host, kafka_2.broker_id, str(kafka_2)) == ("127.0.0.1", 2, "kafka-2")
    assert cluster.members(["kafka-1", cluster.Member("kafka", 1), "cassandra-1"]) == [
        cluster.Member("kafka", 1), cluster.Member("cassandra", 1)]
    assert cluster.members(None) == list(cluster.MEMBERS)
    with pytest.raises(localstack.StackError, match="is not a Kafka broker"):
        _ = cluster.Member.parse("cassandra-1").broker_id


@pytest.mark.parametrize("name", ["cassandra-4", "kafka-0", "kafka", "zookeeper-1", "cassandra-x", ""])
def test_an_unknown_member_lists_the_members(name: str) -> None:
    with pytest.raises(localstack.StackError, match=r"unknown cluster member .*cassandra-1, .*kafka-3"):
        cluster.Member.parse(name)


def _properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_each_broker_is_a_combined_node_of_a_three_voter_quorum(tmp_path: Path) -> None:
    ports = cluster.ClusterPorts.from_env({})
    props = _properties(cluster.render_kafka_properties(cluster.Member("kafka", 2), ports, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19193"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    replication = {k: props[k] for k in ("default.replication.factor", "min.insync.replicas",
                                         "offsets.topic.replication.factor",
                                         "transaction.state.log.replication.factor", "transaction.state.log.min.isr")}
    assert replication == {"default.replication.factor": "3", "min.insync.replicas": "2",
                           "offsets.topic.replication.factor": "3",
                           "transaction.state.log.replication.factor": "3", "transaction.state.log.min.isr": "2"}
    assert not any("{" in value for value in props.values())


def test_each_cassandra_node_is_a_seed_on_its_own_address(tmp_path: Path) -> None:
    import yaml

    ports = cluster.ClusterPorts.from_env({"STACK_CLUSTER_CASSANDRA_STORAGE_PORT": "7200"})
    conf = yaml.safe_load(cluster.render_cassandra_yaml(cluster.Member("cassandra", 3), ports, tmp_path))
    assert conf["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:7200,127.0.0.2:7200,127.0.0.3:7200"
    assert (conf["listen_address"], conf["rpc_address"]) == ("127.0.0.3", "127.0.0.3")
    assert (conf["storage_port"], conf["native_transport_port"]) == (7200, 9142)
    assert conf["cluster_name"] != "feature-consumer-local"  # the single node's: the two never join
    assert conf["endpoint_snitch"] == "GossipingPropertyFileSnitch" and conf["paxos_variant"] == "v2"
    assert conf["auto_bootstrap"] is False
    assert conf["data_file_directories"] == [f"{tmp_path}/data"]
    assert cluster.render_rackdc() == "dc=datacenter1\nrack=rack1\n"


def test_a_kafka_cluster_id_is_what_the_storage_tool_accepts() -> None:
    import base64

    for _ in range(50):
        cid = cluster.new_kafka_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def _g(generation: int, heartbeat: int, status: str = "NORMAL,123") -> cluster.GossipEntry:
    return cluster.GossipEntry(generation, heartbeat, status)


@pytest.mark.parametrize(("observed", "own", "up"), [
    (_g(100, 50), _g(100, 52), True),
    (_g(100, 53), _g(100, 52), True),  # the observer was asked after the node itself
    (_g(100, 40), _g(100, 52), False),  # not heard from for twelve beats
    (_g(90, 500), _g(100, 3), False),  # the observer still holds the generation before a restart
    (_g(100, 51, "shutdown,true"), _g(100, 52), False),
    (None, _g(100, 52), False),
    (_g(100, 52), None, False),
])
def test_a_node_is_seen_up_from_its_current_generation_and_a_recent_heartbeat(
    observed: cluster.GossipEntry | None, own: cluster.GossipEntry | None, up: bool
) -> None:
    assert cluster.sees_up(observed, own) is up


def _view(brokers: list[int], partitions: dict[str, list[tuple[list[int], list[int]]]]) -> cluster.BrokerView:
    return cluster.BrokerView(frozenset(brokers), {(t, i): (tuple(r), tuple(isr))
                                                   for t, ps in partitions.items() for i, (r, isr) in enumerate(ps)})


def test_a_broker_is_in_sync_when_live_and_in_the_isr_of_all_its_partitions() -> None:
    full = _view([1, 2, 3], {"t": [([1, 2, 3], [1, 2, 3]), ([2, 3, 1], [2, 3, 1])], "u": [([1, 2], [2, 1])]})
    assert cluster.broker_in_sync(full, 3) is None
    fenced = _view([1, 2], {"t": [([1, 2, 3], [1, 2])]})
    assert "not among the live brokers [1, 2]" in (cluster.broker_in_sync(fenced, 3) or "")
    catching_up = _view([1, 2, 3], {"t": [([1, 2, 3], [1, 2]), ([1, 2, 3], [1, 2, 3])], "u": [([1, 2], [1, 2])]})
    assert cluster.broker_in_sync(catching_up, 3) == "broker 3 is not yet in the ISR of t-0"
    assert cluster.broker_in_sync(catching_up, 1) is None  # u-0 holds no replica on 3


def test_a_broker_is_ready_only_when_every_running_broker_tells_it_in_sync() -> None:
    synced = _view([1, 2, 3], {"t": [([1, 2, 3], [1, 2, 3])]})
    behind = _view([1, 2, 3], {"t": [([1, 2, 3], [1, 2])]})  # has not replayed the ISR change yet
    assert cluster.in_sync_everywhere(3, {1: synced, 2: synced, 3: synced}, [1, 2, 3]) is None
    assert cluster.in_sync_everywhere(3, {1: synced, 2: behind, 3: synced}, [1, 2, 3]) == (
        "as kafka-2 tells it, broker 3 is not yet in the ISR of t-0")
    assert cluster.in_sync_everywhere(3, {1: synced, 3: synced}, [1, 2, 3]) == (
        "kafka-2 gave no metadata of its own yet (it is not among the live brokers, or it did not answer)")
    assert cluster.in_sync_everywhere(3, {1: synced, 3: synced}, [1, 3]) is None  # kafka-2 is stopped


def test_a_brokers_view_is_read_from_its_metadata_answer() -> None:
    from kafka.protocol.metadata import MetadataResponse

    # The answer as it comes off the wire (encoded and decoded by the client's own protocol classes), in the
    # version the readiness check asks for.
    answer = MetadataResponse[8](0, [(1, "h", 1, None), (3, "h", 3, None)], "cluster", 1, [
        (0, "t", False, [(0, 0, 1, 0, [1, 3], [1], []), (0, 1, 3, 0, [3, 1], [3, 1], [])], set())], set())
    view = cluster.BrokerView.of(MetadataResponse[8].decode(answer.encode()).to_object())
    assert view.brokers == {1, 3}
    assert view.partitions == {("t", 0): ((1, 3), (1,)), ("t", 1): ((3, 1), (3, 1))}
    assert cluster.broker_in_sync(view, 3) == "broker 3 is not yet in the ISR of t-0"


def test_cluster_status_in_an_empty_state_dir_has_six_stopped_members() -> None:
    report = cluster.status()
    assert list(report) == [m.name for m in cluster.MEMBERS]
    assert all(info["state"] == "stopped" and not info["answers"] for info in report.values())
    assert cluster.usage(0) == {}


def test_member_operations_on_a_stopped_member_say_so() -> None:
    for operation in (cluster.kill, cluster.pause, cluster.resume, cluster.stop):
        with pytest.raises(localstack.StackError, match="cassandra-2 is not running"):
            operation("cassandra-2")
    with pytest.raises(localstack.StackError, match=r"no cluster was set up .*up --cluster"):
        cluster.start("kafka-1")
    with pytest.raises(localstack.StackError, match="cassandra-1 is stopped, so it cannot become ready"):
        cluster.wait_ready("cassandra-1", timeout=1)


def test_cluster_up_refuses_a_taken_port_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_prepare(*_: object) -> None:
        raise AssertionError("nothing may be prepared or started while a port is taken")

    monkeypatch.setattr(cluster, "_prepare_cassandra", must_not_prepare)
    monkeypatch.setattr(cluster, "_prepare_kafka", must_not_prepare)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("STACK_CLUSTER_CQL_PORT", str(port))
        message = rf"cassandra-1: port 127.0.0.1:{port} .*STACK_CLUSTER_CQL_PORT"
        with pytest.raises(localstack.StackError, match=message):
            cluster.up(echo=lambda _: None)


def test_a_cassandra_address_that_is_not_local_says_how_to_add_it() -> None:
    with pytest.raises(localstack.StackError, match=r"cannot listen on 192\.0\.2\.123 .*127\.0\.0\.0/8"):
        cluster.check_hosts(["127.0.0.2", "192.0.2.123"])


def test_member_commands_need_the_cluster_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert localstack.main(["kill", "cassandra-2"]) == 1
    assert "add --cluster" in capsys.readouterr().err
    assert localstack.main(["up", "--cluster", "kafka"]) == 1
    assert "takes no service names" in capsys.readouterr().err
    assert localstack.main(["kill", "cassandra-9", "--cluster"]) == 1
    assert "unknown cluster member 'cassandra-9'" in capsys.readouterr().err
