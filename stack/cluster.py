"""The local cluster: three Cassandra 5.0 nodes and three Kafka 4.1 brokers, beside the single-node stack.

    python -m stack.localstack up --cluster                  # start all six members, wait until they are ready
    python -m stack.localstack status --cluster [--sample 30]
    python -m stack.localstack kill cassandra-2 --cluster    # also: stop, pause, resume, start (data kept)
    python -m stack.localstack down --cluster

Cassandra runs on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to the loopback
interface), each node with a 512 MiB heap, all three seeds of one ring in one data center (`datacenter1`,
GossipingPropertyFileSnitch), Paxos v2, JMX off. The three Kafka nodes are combined broker + KRaft
controller on 127.0.0.1, the controllers forming the metadata quorum; topics default to three replicas
and min.insync.replicas=2, and so do the internal topics.

The cluster has its own state directory (`STACK_CLUSTER_DIR`, default: `feature-consumer-cluster` under
the system temp directory) and its own ports, so it runs beside the single-node stack of
stack/localstack.py without touching it. Each member is named `cassandra-1..3` or `kafka-1..3` and can
be stopped (SIGTERM, waited for), killed (SIGKILL), paused (SIGSTOP), resumed (SIGCONT) and started again
with its data kept; `wait_ready` waits until a member is back in the cluster (a Cassandra node answers CQL
and it and the other running nodes see each other UP; a broker is unfenced and in the ISR of every
partition it holds, as every running broker tells in its own metadata).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from stack import localstack
from stack.localstack import HERE, StackError

SIZE = 3
CASSANDRA_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
KAFKA_HOST = "127.0.0.1"
DATACENTER = "datacenter1"
RACK = "rack1"
CLUSTER_NAME = "feature-consumer-cluster"
SERVICES = ("cassandra", "kafka")

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- ports and members


@dataclasses.dataclass(frozen=True)
class ClusterPorts:
    """Base ports; broker n listens on `kafka + n - 1` and its controller on `kafka_controller + n - 1`.

    The Cassandra nodes share their ports, each on its own loopback address."""

    kafka: int = 19092
    kafka_controller: int = 19192
    cql: int = 9142
    cassandra_storage: int = 7100

    ENV: ClassVar[dict[str, str]] = {
        "kafka": "STACK_CLUSTER_KAFKA_PORT",
        "kafka_controller": "STACK_CLUSTER_KAFKA_CONTROLLER_PORT",
        "cql": "STACK_CLUSTER_CQL_PORT",
        "cassandra_storage": "STACK_CLUSTER_CASSANDRA_STORAGE_PORT",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterPorts:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for field, name in cls.ENV.items():
            raw = env.get(name)
            if raw is None:
                continue
            try:
                values[field] = int(raw)
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a port number") from None
        ports = cls(**values)
        ports.check()
        return ports

    def broker_port(self, index: int) -> int:
        return self.kafka + index - 1

    def controller_port(self, index: int) -> int:
        return self.kafka_controller + index - 1

    def check(self) -> None:
        """Every port in 1..65535, and no two members listening on the same port of 127.0.0.1."""
        uses: dict[int, str] = {}
        for field, name in self.ENV.items():
            base = getattr(self, field)
            count = SIZE if field.startswith("kafka") else 1
            if base < 1 or base + count - 1 > 65535:
                span = f"{base}..{base + count - 1}" if count > 1 else str(base)
                raise StackError(f"{name}={base}: ports {span} must lie within 1..65535")
            for port in range(base, base + count):
                if port in uses:
                    raise StackError(
                        f"{name}={base} and {uses[port]} both ask for port {port}; choose ports that do not overlap"
                    )
                uses[port] = f"{name}={base}"

    def of(self, member: Member) -> list[tuple[str, str, int]]:
        """(variable, host, port) of every port the member listens on."""
        if member.service == "kafka":
            return [(self.ENV["kafka"], member.host, self.broker_port(member.index)),
                    (self.ENV["kafka_controller"], member.host, self.controller_port(member.index))]
        return [(self.ENV["cql"], member.host, self.cql),
                (self.ENV["cassandra_storage"], member.host, self.cassandra_storage)]


@dataclasses.dataclass(frozen=True, order=True)
class Member:
    service: str
    index: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def host(self) -> str:
        return CASSANDRA_HOSTS[self.index - 1] if self.service == "cassandra" else KAFKA_HOST

    @property
    def broker_id(self) -> int:
        """The KRaft node id of a Kafka member (kafka-n is node n)."""
        if self.service != "kafka":
            raise StackError(f"{self.name} is not a Kafka broker")
        return self.index

    @classmethod
    def parse(cls, name: str) -> Member:
        service, _, number = name.strip().lower().rpartition("-")
        if service in SERVICES and number.isdigit() and 1 <= int(number) <= SIZE:
            return cls(service, int(number))
        raise StackError(f"unknown cluster member {name!r}; choose from {', '.join(m.name for m in MEMBERS)}")

    def __str__(self) -> str:
        return self.name


MEMBERS: tuple[Member, ...] = tuple(Member(s, i) for s in SERVICES for i in range(1, SIZE + 1))
CASSANDRA_MEMBERS = tuple(m for m in MEMBERS if m.service == "cassandra")
KAFKA_MEMBERS = tuple(m for m in MEMBERS if m.service == "kafka")


def members(names: Iterable[str | Member] | None = None) -> list[Member]:
    """The named members (all when None), each once, in the given order."""
    if names is None:
        return list(MEMBERS)
    found = [n if isinstance(n, Member) else Member.parse(n) for n in names]
    return list(dict.fromkeys(found))


@dataclasses.dataclass(frozen=True)
class ClusterEndpoints:
    bootstrap_servers: str  # all three brokers, comma-separated
    brokers: tuple[str, ...]  # host:port of kafka-1, kafka-2, kafka-3
    cql_hosts: tuple[str, ...]  # contact points of cassandra-1, -2, -3
    cql_port: int
    datacenter: str

    @property
    def cql_host(self) -> str:
        """The first contact point (the driver finds the other nodes from it)."""
        return self.cql_hosts[0]

    def broker(self, member: str | Member) -> str:
        m = Member.parse(member) if isinstance(member, str) else member
        return self.brokers[m.broker_id - 1]

    @classmethod
    def for_ports(cls, ports: ClusterPorts) -> ClusterEndpoints:
        brokers = tuple(f"{KAFKA_HOST}:{ports.broker_port(m.index)}" for m in KAFKA_MEMBERS)
        return cls(",".join(brokers), brokers, CASSANDRA_HOSTS, ports.cql, DATACENTER)


# --------------------------------------------------------------------------- configuration


def kafka_voters(ports: ClusterPorts) -> str:
    return ",".join(f"{m.broker_id}@{m.host}:{ports.controller_port(m.index)}" for m in KAFKA_MEMBERS)


def render_kafka_properties(member: Member, ports: ClusterPorts, data: Path) -> str:
    return (HERE / "kafka" / "cluster.properties").read_text().format(
        node_id=member.broker_id, voters=kafka_voters(ports), host=member.host,
        port=ports.broker_port(member.index), controller_port=ports.controller_port(member.index), data=data,
    )


def render_cassandra_yaml(member: Member, ports: ClusterPorts, home: Path) -> str:
    seeds = ",".join(f"{host}:{ports.cassandra_storage}" for host in CASSANDRA_HOSTS)
    return (HERE / "cassandra" / "cluster.yaml").read_text().format(
        cluster_name=CLUSTER_NAME, seeds=seeds, host=member.host, cql_port=ports.cql,
        storage_port=ports.cassandra_storage, home=home,
    )


def render_rackdc() -> str:
    return f"dc={DATACENTER}\nrack={RACK}\n"


def new_kafka_cluster_id() -> str:
    """A cluster id as Kafka's StorageTool random-uuid makes it (URL-safe base64 of 16 random bytes)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


# --------------------------------------------------------------------------- state


def cluster_dir() -> Path:
    raw = os.environ.get("STACK_CLUSTER_DIR")
    return Path(raw) if raw else Path(tempfile.gettempdir()) / "feature-consumer-cluster"


def _home(member: Member) -> Path:
    return cluster_dir() / member.name


def _pid_path(member: Member) -> Path:
    return _home(member) / "pid"


def log_path(member: Member | str) -> Path:
    """The member's main log (Cassandra's system.log, Kafka's server.log)."""
    m = Member.parse(member) if isinstance(member, str) else member
    return _home(m) / ("system.log" if m.service == "cassandra" else "server.log")


def _console(member: Member) -> Path:
    return _home(member) / "console.log"


def _state_path() -> Path:
    return cluster_dir() / "cluster.json"


@dataclasses.dataclass(frozen=True)
class _State:
    ports: ClusterPorts
    kafka_cluster_id: str


def _read_state() -> _State | None:
    try:
        raw = json.loads(_state_path().read_text())
        return _State(ClusterPorts(**raw["ports"]), str(raw["kafka_cluster_id"]))
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _write_state(state: _State) -> None:
    cluster_dir().mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps({"ports": dataclasses.asdict(state.ports),
                                         "kafka_cluster_id": state.kafka_cluster_id}))


def _proc_state(pid: int) -> str | None:
    """The kernel's state letter of a live process, None when it is gone (or a zombie)."""
    if not localstack._alive(pid):
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return "?"


def pid(member: Member | str) -> int | None:
    """The member's process id while it runs (or is paused)."""
    m = Member.parse(member) if isinstance(member, str) else member
    try:
        value = int(_pid_path(m).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return value if localstack._alive(value) else None


def state(member: Member | str) -> str:
    """'running', 'paused' (SIGSTOP) or 'stopped'."""
    p = pid(member)
    if p is None:
        return "stopped"
    return "paused" if _proc_state(p) in ("T", "t") else "running"


def current_ports() -> ClusterPorts:
    recorded = _read_state()
    return recorded.ports if recorded else ClusterPorts.from_env()


def endpoints() -> ClusterEndpoints:
    return ClusterEndpoints.for_ports(current_ports())


# --------------------------------------------------------------------------- processes


def check_hosts(hosts: Iterable[str] = CASSANDRA_HOSTS) -> None:
    """Each Cassandra address must be a local address (Linux: all of 127.0.0.0/8 is on `lo`)."""
    for host in hosts:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:
                raise StackError(
                    f"cannot listen on {host} ({exc.strerror}): the cluster's Cassandra nodes need the loopback "
                    f"addresses {', '.join(CASSANDRA_HOSTS)} (Linux routes all of 127.0.0.0/8 to lo; on macOS "
                    f"add them with `sudo ifconfig lo0 alias {host} up`)"
                ) from None


def _spawn(member: Member, cmd: list[str]) -> int:
    home = _home(member)
    home.mkdir(parents=True, exist_ok=True)
    with _console(member).open("ab") as out:
        out.write(f"\n=== started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=home, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _pid_path(member).write_text(str(proc.pid))
    return proc.pid


def _reap(p: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(p, os.WNOHANG)


def _wait_gone(p: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while localstack._alive(p):
        _reap(p)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    _reap(p)
    return True


def _signal(member: Member, sig: signal.Signals) -> int:
    p = pid(member)
    if p is None:
        raise StackError(f"{member} is not running")
    os.killpg(p, sig)
    return p


def _jvm_options() -> list[str]:
    """Options every member gets. Six JVMs start on a small machine, and are restarted often: the JIT
    stops at C1, which halves a Cassandra node's start-up (16 s instead of 30 s for three nodes together
    on two cores) and is faster than C2 for the first minutes of load; C2 overtakes it later by ~10%
    (LWT throughput measured 280-300/s with C1 against 100, 210, then 330/s with C2 warming up).
    STACK_CLUSTER_JVM_OPTS adds options after these (e.g. -XX:TieredStopAtLevel=4 for C2 back)."""
    return ["-XX:TieredStopAtLevel=1", *os.environ.get("STACK_CLUSTER_JVM_OPTS", "").split()]


def _java_classpath(service: str) -> tuple[str, list[str]]:
    # The resolved classpath is kept outside the state directory, which `down` deletes.
    return localstack._require_java(), localstack._maven_paths(service, cache_in=localstack.cache_dir() / "cluster")


def _kafka_jvm(member: Member, java: str, classpath: list[str]) -> list[str]:
    heap = os.environ.get("STACK_CLUSTER_KAFKA_HEAP", "512m")
    return [
        java, "-Xms128m", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true", *_jvm_options(),
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.xml'}", f"-Dkafka.logs.dir={_home(member)}",
        "-cp", os.pathsep.join(classpath),
    ]


def _prepare_kafka(todo: list[Member], ports: ClusterPorts, cluster_id: str) -> dict[Member, list[str]]:
    """Write each broker's properties, format the storage of those that have none; return their commands."""
    java, classpath = _java_classpath("kafka")
    commands: dict[Member, list[str]] = {}
    formats: list[tuple[Member, subprocess.Popen[str]]] = []
    for member in todo:
        home, data = _home(member), _home(member) / "data"
        home.mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        props.write_text(render_kafka_properties(member, ports, data))
        jvm = _kafka_jvm(member, java, classpath)
        if not (data / "meta.properties").exists():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            formats.append((member, subprocess.Popen(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        commands[member] = [*jvm, "kafka.Kafka", str(props)]
    for member, proc in formats:
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise StackError(f"{member}: Kafka's StorageTool format did not finish within 120s") from None
        if proc.returncode != 0:
            raise StackError(f"{member}: Kafka's StorageTool format failed ({proc.returncode}):\n{out}")
    return commands


def _prepare_cassandra(todo: list[Member], ports: ClusterPorts) -> dict[Member, list[str]]:
    java, jars = _java_classpath("cassandra")
    jamm = next((j for j in jars if Path(j).name.startswith("jamm-")), None)
    if jamm is None:
        raise StackError("the Cassandra classpath has no jamm jar; stack/pom.xml is broken")
    heap = os.environ.get("STACK_CLUSTER_CASSANDRA_HEAP", "512M")
    commands: dict[Member, list[str]] = {}
    for member in todo:
        home = _home(member)
        home.mkdir(parents=True, exist_ok=True)
        conf, rackdc = home / "cassandra.yaml", home / "cassandra-rackdc.properties"
        conf.write_text(render_cassandra_yaml(member, ports, home))
        rackdc.write_text(render_rackdc())
        commands[member] = [
            java, f"-Xms{heap}", f"-Xmx{heap}", *localstack._cassandra_jvm_flags(jamm), *_jvm_options(),
            f"-Dcassandra.config=file://{conf}",
            f"-Dcassandra-rackdc.properties=file://{rackdc}",
            f"-Dcassandra.logdir={home}",
            f"-Dcassandra.storagedir={home}",
            f"-Dlogback.configurationFile={HERE / 'cassandra' / 'logback.xml'}",
            "-Dcassandra-foreground=yes",
            # Three seeds on one machine: no need to wait for a settled gossip or a slow ring.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-cp", os.pathsep.join(jars),
            "org.apache.cassandra.service.CassandraDaemon",
        ]
    return commands


def _launch(todo: list[Member], ports: ClusterPorts, cluster_id: str, echo: Echo) -> None:
    """Start the given stopped members (data kept where there is some), without waiting for them."""
    for member in todo:
        for env_name, host, port in ports.of(member):
            localstack._check_ports_free(member.name, [(env_name, port)], host=host)
    # Cassandra first: its nodes take longest to start, and Kafka's storage is formatted meanwhile.
    cassandra = [m for m in todo if m.service == "cassandra"]
    kafka = [m for m in todo if m.service == "kafka"]
    for group in (cassandra, kafka):
        if not group:
            continue
        commands = (_prepare_cassandra(group, ports) if group is cassandra
                    else _prepare_kafka(group, ports, cluster_id))
        for member in group:
            echo(f"starting {member} ...")
            _spawn(member, commands[member])


# --------------------------------------------------------------------------- readiness


@dataclasses.dataclass(frozen=True)
class GossipEntry:
    """One row of a node's system_views.gossip_info: what that node knows of an endpoint."""

    generation: int
    heartbeat: int
    status: str


GOSSIP_MAX_LAG = 5


def sees_up(observed: GossipEntry | None, own: GossipEntry | None, max_lag: int = GOSSIP_MAX_LAG) -> bool:
    """Whether an observer holds a node UP, judged from gossip: the observer knows the node's current
    generation (the one the node reports for itself, so a restart has reached it), the node is NORMAL,
    and the observer's copy of its heartbeat (which the node raises once a second) is at most `max_lag`
    beats behind the node's own: the observer heard from it seconds ago, far less than the failure
    detector waits before it convicts a silent node, and it marks a node that is heard from again UP."""
    if observed is None or own is None:
        return False
    return (observed.generation == own.generation and observed.status.startswith("NORMAL")
            and own.heartbeat - observed.heartbeat <= max_lag)


@dataclasses.dataclass(frozen=True)
class BrokerView:
    """What one broker's own metadata says: the live (unfenced) brokers, and per partition its replicas
    and ISR. Each broker replays the cluster's metadata log by itself, so for a few milliseconds after a
    change one broker may tell it and another not yet."""

    brokers: frozenset[int]
    partitions: Mapping[tuple[str, int], tuple[tuple[int, ...], tuple[int, ...]]]  # -> (replicas, ISR)

    @classmethod
    def of(cls, response: Mapping[str, Any]) -> BrokerView:
        """From a Metadata response as kafka-python's `to_object()` gives it."""
        return cls(frozenset(b["node_id"] for b in response["brokers"]),
                   {(t["topic"], p["partition"]): (tuple(p["replicas"]), tuple(p["isr"]))
                    for t in response["topics"] for p in t["partitions"]})


def broker_in_sync(view: BrokerView, broker_id: int) -> str | None:
    """None when, in `view`, the broker is registered (unfenced) and in the ISR of every partition it
    holds a replica of; otherwise what is still missing."""
    if broker_id not in view.brokers:
        return f"broker {broker_id} is not among the live brokers {sorted(view.brokers)}"
    lagging = [f"{topic}-{p}" for (topic, p), (replicas, isr) in sorted(view.partitions.items())
               if broker_id in replicas and broker_id not in isr]
    if lagging:
        more = f" (+{len(lagging) - 5} more)" if len(lagging) > 5 else ""
        return f"broker {broker_id} is not yet in the ISR of {', '.join(lagging[:5])}{more}"
    return None


def in_sync_everywhere(broker_id: int, views: Mapping[int, BrokerView], running: Iterable[int]) -> str | None:
    """None when every running broker's own metadata holds the broker in sync (so a client that goes on
    at once finds it so whichever broker it asks); otherwise the first one that does not, and why."""
    for other in sorted(running):
        if other not in views:
            return (f"kafka-{other} gave no metadata of its own yet (it is not among the live brokers, or it "
                    "did not answer)")
        reason = broker_in_sync(views[other], broker_id)
        if reason is not None:
            return f"as kafka-{other} tells it, {reason}"
    return None


def _cql_session(host: str, port: int, timeout: float = 5.0) -> tuple[Any, Any]:
    """A driver connected to this one node only, without schema or token metadata (cheap to open)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.io.asyncioreactor import AsyncioConnection
    from cassandra.policies import WhiteListRoundRobinPolicy

    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=timeout)
    cluster = Cluster(
        [host], port=port, protocol_version=5, connect_timeout=timeout, control_connection_timeout=timeout,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, schema_metadata_enabled=False,
        token_metadata_enabled=False, connection_class=AsyncioConnection,
    )
    try:
        return cluster, cluster.connect()
    except BaseException:
        cluster.shutdown()
        raise


class _Probes:
    """Connections kept across the polls of one wait; a member that fails to answer is asked afresh."""

    def __init__(self, ports: ClusterPorts) -> None:
        self.ports = ports
        self._cql: dict[Member, tuple[Any, Any]] = {}
        self._kafka: Any = None

    def gossip(self, member: Member) -> dict[str, GossipEntry] | None:
        if localstack._port_free(self.ports.cql, member.host):
            return None
        try:
            if member not in self._cql:
                self._cql[member] = _cql_session(member.host, self.ports.cql)
            rows = self._cql[member][1].execute(
                "SELECT address, generation, heartbeat, status_with_port FROM system_views.gossip_info")
            return {str(r.address): GossipEntry(int(r.generation or 0), int(r.heartbeat or 0),
                                                 str(r.status_with_port or "")) for r in rows}
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            self._drop(member)
            return None

    def reaches_all(self, member: Member) -> bool:
        """Whether the node coordinates a read at consistency ALL of system_distributed (three replicas,
        so all three nodes): it holds the other two UP and they answer it."""
        from cassandra import ConsistencyLevel
        from cassandra.query import SimpleStatement

        if member not in self._cql:
            return False
        statement = SimpleStatement(
            "SELECT * FROM system_distributed.view_build_status WHERE keyspace_name = 'stack' AND view_name = 'probe'",
            consistency_level=ConsistencyLevel.ALL)
        try:
            self._cql[member][1].execute(statement)
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def _drop(self, member: Member) -> None:
        cluster = self._cql.pop(member, (None, None))[0]
        if cluster is not None:
            cluster.shutdown()

    def kafka_views(self, brokers: Iterable[Member]) -> dict[int, BrokerView]:
        """Each broker's own metadata, asked of it (librdkafka sends a metadata request to a broker of its
        own choosing, kafka-python to the one named); a broker that does not answer is left out."""
        from kafka.client_async import KafkaClient
        from kafka.protocol.metadata import MetadataRequest

        views: dict[int, BrokerView] = {}
        try:
            if self._kafka is None:
                logging.getLogger("kafka").setLevel(logging.CRITICAL)
                self._kafka = KafkaClient(bootstrap_servers=ClusterEndpoints.for_ports(self.ports).bootstrap_servers,
                                          request_timeout_ms=3000, api_version_auto_timeout_ms=3000)
            client = self._kafka
            # Learn the addresses of brokers unfenced since the last round.
            client.poll(future=client.cluster.request_update(), timeout_ms=3000)
            # A broker that is not among the live ones has no address to ask it at: it is not waited for.
            known = [m for m in brokers if client.cluster.broker_metadata(m.broker_id) is not None]
            deadline = time.monotonic() + 3
            while not all(client.ready(m.broker_id) for m in known) and time.monotonic() < deadline:
                client.poll(timeout_ms=50)
            for member in known:
                if not client.is_ready(member.broker_id):
                    continue
                # Version 8: the newest without tagged fields, which every broker since 2.3 and 4.x answers.
                future = client.send(member.broker_id, MetadataRequest[8](
                    topics=None, allow_auto_topic_creation=False, include_cluster_authorized_operations=False,
                    include_topic_authorized_operations=False))
                client.poll(future=future, timeout_ms=3000)
                if future.succeeded():
                    views[member.broker_id] = BrokerView.of(future.value.to_object())
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"; the next round connects afresh
            self._close_kafka()
        return views

    def _close_kafka(self) -> None:
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                self._kafka.close()
            self._kafka = None

    def close(self) -> None:
        for member in list(self._cql):
            self._drop(member)
        self._close_kafka()


def _logs(member: Member) -> str:
    """The last lines of the member's console (JVM errors) and of its own log."""
    return (f"last lines of {_console(member)}:\n{localstack._log_tail(_console(member), 8)}\n"
            f"last lines of {log_path(member)}:\n{localstack._log_tail(log_path(member), 20)}")


def _ready_timeout() -> float:
    return float(os.environ.get("STACK_READY_TIMEOUT", "180"))


def wait_ready(*names: str | Member, timeout: float | None = None, echo: Echo = _quiet) -> dict[str, float]:
    """Wait until each named member (default: all) is back in the cluster; return seconds per member.

    A Cassandra node is ready when it answers CQL and it and every other running node see each other UP
    (see `sees_up`); when all three run, each must also coordinate a read at ALL. A broker is ready
    when it is among the live (unfenced) brokers and in the ISR of every partition it has a replica of,
    in the metadata of every running broker, each asked for its own (a client that goes on at once may
    ask any of them). A member that is stopped, paused or dies while waited for ends the wait with its log."""
    wanted = members(names or None)
    timeout = _ready_timeout() if timeout is None else timeout
    ports = current_ports()
    probes = _Probes(ports)
    start = time.monotonic()
    took: dict[str, float] = {}
    why: dict[Member, str] = {}
    try:
        while True:
            for member in wanted:
                st = state(member)
                if st != "running":
                    raise StackError(f"{member} is {st}, so it cannot become ready; {_logs(member)}")
            pending = [m for m in wanted if m.name not in took]
            views: dict[Member, dict[str, GossipEntry]] = {}
            reaches_all: dict[Member, bool] = {}
            if any(m.service == "cassandra" for m in pending):
                for node in CASSANDRA_MEMBERS:
                    if state(node) == "running":
                        view = probes.gossip(node)
                        if view is not None:
                            views[node] = view
                if len(views) == len(CASSANDRA_MEMBERS):
                    # The whole ring runs: also ask each node to coordinate a read of all three replicas.
                    reaches_all = {node: probes.reaches_all(node) for node in CASSANDRA_MEMBERS}
            running_brokers = [m for m in KAFKA_MEMBERS if state(m) == "running"]
            brokers_view = (probes.kafka_views(running_brokers) if any(m.service == "kafka" for m in pending)
                            else {})
            for member in pending:
                reason = (_cassandra_not_ready(member, views, reaches_all) if member.service == "cassandra"
                          else _kafka_not_ready(member, brokers_view, [m.broker_id for m in running_brokers],
                                                ports))
                if reason is None:
                    took[member.name] = time.monotonic() - start
                    echo(f"{member} ready ({took[member.name]:.1f}s)")
                else:
                    why[member] = reason
            if len(took) == len(wanted):
                return took
            if time.monotonic() - start > timeout:
                lines = [f"{m}: {why.get(m, '?')}" for m in wanted if m.name not in took]
                raise StackError(
                    f"not ready within {timeout:.0f}s (raise STACK_READY_TIMEOUT, or read the logs under "
                    f"{cluster_dir()}):\n" + "\n".join(lines))
            time.sleep(1.0)
    finally:
        probes.close()


def broker_views() -> dict[int, BrokerView]:
    """The metadata each running broker gives when asked for its own (see `BrokerView`)."""
    probes = _Probes(current_ports())
    try:
        return probes.kafka_views([m for m in KAFKA_MEMBERS if state(m) == "running"])
    finally:
        probes.close()


def _cassandra_not_ready(member: Member, views: dict[Member, dict[str, GossipEntry]],
                         reaches_all: dict[Member, bool]) -> str | None:
    if member not in views:
        return f"{member.host}:{current_ports().cql} does not answer CQL yet"
    own = views[member].get(member.host)
    for other in CASSANDRA_MEMBERS:
        if other == member or state(other) != "running":
            continue
        if other not in views:
            return f"{other} (running) does not answer CQL, so it cannot tell whether it sees {member}"
        if not sees_up(views[other].get(member.host), own):
            return f"{other} does not see {member} UP yet: {views[other].get(member.host)} (own: {own})"
        if not sees_up(views[member].get(other.host), views[other].get(other.host)):
            return f"{member} does not see {other} UP yet"
    for node, ok in reaches_all.items():
        if not ok:
            return f"a read at ALL coordinated by {node} does not reach all three replicas yet"
    return None


def _kafka_not_ready(member: Member, views: Mapping[int, BrokerView], running: list[int],
                     ports: ClusterPorts) -> str | None:
    if localstack._port_free(ports.broker_port(member.index), member.host):
        return f"{member.host}:{ports.broker_port(member.index)} is not listening yet"
    return in_sync_everywhere(member.broker_id, views, running)


# --------------------------------------------------------------------------- the cluster


def up(echo: Echo = print, ports: ClusterPorts | None = None) -> tuple[ClusterEndpoints, list[str]]:
    """Start every member that does not run yet and wait until all six are ready.

    Returns the endpoints and the names of the members this call started (so that a caller can stop
    exactly those). A member that fails to start ends with its log; what this call started is killed."""
    recorded = _read_state()
    running = [m for m in MEMBERS if pid(m) is not None]
    if recorded is not None and running:
        if ports is not None and ports != recorded.ports:
            raise StackError(f"a cluster is already running from {cluster_dir()} with other ports; "
                             "run `down --cluster` first or set STACK_CLUSTER_DIR to use another state directory")
        ports = recorded.ports
    ports = ports or ClusterPorts.from_env()
    ports.check()
    check_hosts()
    kafka_data = any((_home(m) / "data" / "meta.properties").exists() for m in KAFKA_MEMBERS)
    cluster_id = recorded.kafka_cluster_id if recorded is not None and kafka_data else new_kafka_cluster_id()
    _write_state(_State(ports, cluster_id))
    todo = [m for m in MEMBERS if pid(m) is None]
    for member in MEMBERS:
        if state(member) == "paused":
            echo(f"resuming {member} (it was paused) ...")
            resume(member)
    start = time.monotonic()
    try:
        _launch(todo, ports, cluster_id, echo)
        wait_ready(timeout=_ready_timeout(), echo=echo)
    except BaseException:
        for member in todo:
            p = pid(member)
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p, signal.SIGKILL)
                _wait_gone(p, 10)
                _pid_path(member).unlink(missing_ok=True)
        raise
    echo(f"cluster ready ({time.monotonic() - start:.1f}s)")
    return ClusterEndpoints.for_ports(ports), [m.name for m in todo]


def stop(*names: str | Member, grace: float | None = None) -> dict[str, float]:
    """Stop members gracefully (SIGTERM: Cassandra drains, a broker hands over its leaderships) and wait
    until they have exited; a member still running after `grace` seconds is killed. Data is kept.
    Returns the seconds each took."""
    grace = float(os.environ.get("STACK_CLUSTER_STOP_GRACE", "60")) if grace is None else grace
    targets = members(names)
    pids = {m: _signal(m, signal.SIGTERM) for m in targets}
    for p in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p, signal.SIGCONT)  # a paused member must run to see its SIGTERM
    start = time.monotonic()
    took: dict[str, float] = {}
    for member, p in pids.items():
        if not _wait_gone(p, max(0.0, grace - (time.monotonic() - start))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p, signal.SIGKILL)
            _wait_gone(p, 30)
        took[member.name] = time.monotonic() - start
        _pid_path(member).unlink(missing_ok=True)
    return took


def kill(*names: str | Member) -> None:
    """SIGKILL members (no shutdown of any kind) and wait until they are gone. Data is kept."""
    targets = members(names)
    pids = {m: _signal(m, signal.SIGKILL) for m in targets}
    for member, p in pids.items():
        if not _wait_gone(p, 30):
            raise StackError(f"{member} (pid {p}) survived SIGKILL for 30s")
        _pid_path(member).unlink(missing_ok=True)


def pause(*names: str | Member) -> None:
    """SIGSTOP members: their sockets stay open and nothing answers (a hung node, not a dead one)."""
    for member in members(names):
        p = _signal(member, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _proc_state(p) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.05)


def resume(*names: str | Member) -> None:
    """SIGCONT paused members (wait_ready tells when the others hold them UP again)."""
    for member in members(names):
        _signal(member, signal.SIGCONT)


def start(*names: str | Member, wait: bool = True, timeout: float | None = None,
          echo: Echo = _quiet) -> dict[str, float]:
    """Start stopped members again on the recorded ports with their data kept; with `wait`, wait until
    they are ready (see wait_ready) and return the seconds each took."""
    targets = members(names)
    recorded = _read_state()
    if recorded is None:
        raise StackError(f"no cluster was set up in {cluster_dir()}; run `up --cluster` first")
    for member in targets:
        if pid(member) is not None:
            raise StackError(f"{member} is already {state(member)}")
    _launch(targets, recorded.ports, recorded.kafka_cluster_id, echo)
    return wait_ready(*targets, timeout=timeout, echo=echo) if wait else {}


def restart(*names: str | Member, hard: bool = False, timeout: float | None = None) -> dict[str, float]:
    """Stop (or, with `hard`, kill) members and start them again; return the seconds until ready."""
    if hard:
        kill(*names)
    else:
        stop(*names)
    return start(*names, timeout=timeout)


def heal(echo: Echo = _quiet, timeout: float | None = None) -> list[str]:
    """Resume paused members, start stopped ones, and wait until all six are ready; return whom it touched.
    For test teardown: the next test starts from a whole cluster whatever the last one did."""
    paused = [m for m in MEMBERS if state(m) == "paused"]
    if paused:
        resume(*paused)
    stopped = [m for m in MEMBERS if state(m) == "stopped"]
    if stopped:
        start(*stopped, wait=False, echo=echo)
    wait_ready(timeout=timeout, echo=echo)
    return [m.name for m in (*paused, *stopped)]


def down(names: Iterable[str | Member] | None = None, echo: Echo = print, grace: float = 15.0) -> None:
    """Stop members (default: all; SIGTERM, then SIGKILL after `grace`); when none runs any more, delete the
    cluster's state directory (its data and logs)."""
    targets = [m for m in members(names) if pid(m) is not None]
    for member in targets:
        echo(f"stopping {member} (pid {pid(member)}) ...")
    if targets:
        stop(*targets, grace=grace)
    if not any(pid(m) for m in MEMBERS):
        shutil.rmtree(cluster_dir(), ignore_errors=True)


def member_answers(member: Member, ports: ClusterPorts) -> bool:
    if member.service == "kafka":
        return localstack.kafka_answers(f"{member.host}:{ports.broker_port(member.index)}")
    return localstack.cassandra_answers(member.host, ports.cql)


def status(probe: bool = True) -> dict[str, dict[str, Any]]:
    """Per member: pid, state (running / paused / stopped), RSS in MiB and whether it answers."""
    ports = current_ports()
    report: dict[str, dict[str, Any]] = {}
    for member in MEMBERS:
        p, st = pid(member), state(member)
        report[member.name] = {
            "pid": p, "state": st, "rss_mib": _rss_mib(p) if p else None,
            "answers": probe and st == "running" and member_answers(member, ports),
        }
    return report


def _rss_mib(p: int) -> float | None:
    try:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cpu_seconds(p: int) -> float | None:
    try:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def usage(seconds: float) -> dict[str, tuple[float | None, float | None]]:
    """(RSS in MiB, CPU in percent of one core over `seconds`) per running member."""
    before = {m: (p, _cpu_seconds(p)) for m in MEMBERS if (p := pid(m)) is not None}
    time.sleep(seconds)
    result: dict[str, tuple[float | None, float | None]] = {}
    for member, (p, cpu0) in before.items():
        cpu1 = _cpu_seconds(p)
        percent = None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / seconds
        result[member.name] = (_rss_mib(p), percent)
    return result


# --------------------------------------------------------------------------- Kafka helpers for tests


@dataclasses.dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def kafka_partitions(topic: str, admin: Any = None, timeout: float = 10.0) -> list[PartitionState]:
    """Leader, replicas and ISR of each partition of a topic, as the brokers report them now (asked
    through `admin`, a confluent-kafka AdminClient, or one made for the call)."""
    from confluent_kafka.admin import AdminClient

    if admin is None:
        admin = AdminClient({"bootstrap.servers": endpoints().bootstrap_servers, "log_level": 0})
    meta = admin.list_topics(topic=topic, timeout=timeout).topics[topic]
    if meta.error is not None:
        raise StackError(f"topic {topic}: {meta.error}")
    return [PartitionState(p, m.leader, tuple(m.replicas), tuple(m.isrs)) for p, m in sorted(meta.partitions.items())]


@contextlib.contextmanager
def cql_session(member: str | Member, timeout: float = 10.0) -> Iterator[Any]:
    """A driver session bound to one node (its whitelist holds only that node), for probing one coordinator."""
    m = Member.parse(member) if isinstance(member, str) else member
    cluster, session = _cql_session(m.host, current_ports().cql, timeout)
    try:
        yield session
    finally:
        cluster.shutdown()
