"""The local development stack: Apache Kafka (KRaft), Apache Cassandra and Apicurio Registry.

Each service runs from artifacts that Maven resolves from Maven Central (see `stack/pom.xml`);
nothing is downloaded by hand and no container engine is needed. Everything binds to 127.0.0.1,
data lives in a throwaway state directory, and ports come from the environment.

    python -m stack.localstack up [kafka cassandra registry]   # start (default: kafka cassandra) and wait
    python -m stack.localstack status
    python -m stack.localstack down

`up` is idempotent: a service that already runs from the same state directory is reused.
With `--cluster`, `up`, `status` and `down` act on the three-node cluster of stack/cluster.py instead
(its own state directory and ports), and `stop`, `kill`, `pause`, `resume`, `start` on its members.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
SERVICES = ("kafka", "cassandra", "registry")
DEFAULT_SERVICES = ("kafka", "cassandra")
HOST = "127.0.0.1"


class StackError(RuntimeError):
    """A failure the user can act on; the message says what and what to do."""


@dataclasses.dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    cql: int
    cassandra_storage: int
    registry: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ports:
        env = dict(os.environ if env is None else env)

        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise StackError(f"{name}={raw!r} is not a port number") from None
            if not 1 <= value <= 65535:
                raise StackError(f"{name}={value} is outside 1..65535")
            return value

        return cls(
            kafka=port("STACK_KAFKA_PORT", 9092),
            kafka_controller=port("STACK_KAFKA_CONTROLLER_PORT", 9093),
            cql=port("STACK_CQL_PORT", 9042),
            cassandra_storage=port("STACK_CASSANDRA_STORAGE_PORT", 7000),
            registry=port("STACK_REGISTRY_PORT", 8081),
        )


def state_dir() -> Path:
    raw = os.environ.get("STACK_DIR")
    return Path(raw) if raw else Path(tempfile.gettempdir()) / "feature-consumer-stack"


def cache_dir() -> Path:
    """Where unpacked archives live between runs (outside the repository, like Maven's own cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "feature-consumer-stack"


@dataclasses.dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    cql_host: str
    cql_port: int
    registry_url: str

    @classmethod
    def for_ports(cls, ports: Ports) -> Endpoints:
        return cls(
            bootstrap_servers=f"{HOST}:{ports.kafka}",
            cql_host=HOST,
            cql_port=ports.cql,
            registry_url=f"http://{HOST}:{ports.registry}/apis/ccompat/v7",
        )


# --------------------------------------------------------------------------- prerequisites


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "java was not found on PATH: install a Java 17 JDK (e.g. Debian's openjdk-17-jdk-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"could not read the Java version from `java -version`: {out.strip()!r}")
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
    if major < 17:
        raise StackError(f"Java {major} found, but Kafka 4 and Cassandra 5 need Java 17 or newer")
    return java


def _require_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn was not found on PATH: install Apache Maven 3.8+ (e.g. Debian's maven package)")
    return mvn


def _cached_classpath(out_file: Path) -> list[str] | None:
    """The paths Maven resolved last time, if the pom has not changed since and every file is still there
    (Maven takes seconds to say so again, and Kafka's tools are run many times per test session)."""
    try:
        if out_file.stat().st_mtime < POM.stat().st_mtime:
            return None
        paths = [p for p in out_file.read_text().strip().split(os.pathsep) if p]
    except FileNotFoundError:
        return None
    return paths if paths and all(os.path.exists(p) for p in paths) else None


def _maven_paths(profile: str, cache_in: Path | None = None) -> list[str]:
    """Resolve a profile of stack/pom.xml and return the artifact paths Maven resolved.

    The resolved paths are kept in `cache_in` (default: the state directory) for the next call."""
    out_file = (cache_in or state_dir()) / f"{profile}.classpath"
    cached = _cached_classpath(out_file)
    if cached is not None:
        return cached
    mvn = _require_maven()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "-P", profile,
        "dependency:build-classpath", f"-Dmdep.outputFile={out_file}",
    ]
    timeout = float(os.environ.get("STACK_MAVEN_TIMEOUT", "1200"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise StackError(
            f"Maven did not resolve the '{profile}' artifacts of {POM} within {timeout:.0f}s "
            "(is Maven Central reachable? raise STACK_MAVEN_TIMEOUT for a slow first download)"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise StackError(
            f"Maven could not resolve the '{profile}' artifacts of {POM} "
            f"(is Maven Central reachable?):\n{tail}"
        )
    return [p for p in out_file.read_text().strip().split(os.pathsep) if p]


# --------------------------------------------------------------------------- processes


def _pid_file(name: str) -> Path:
    return state_dir() / name / "pid"


def _read_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def service_pid(name: str) -> int | None:
    """The pid of a service this stack started and that still runs (for benchmarks that count its CPU)."""
    return _read_pid(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports_free(service: str, ports: Iterable[tuple[str, int]], host: str = HOST) -> None:
    for env_name, port in ports:
        if not _port_free(port, host):
            raise StackError(
                f"{service}: port {host}:{port} is already in use by another program; "
                f"stop it, or choose another port with {env_name}=<port>"
            )


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _spawn(name: str, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
    log = state_dir() / name / "console.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _wait_ready(
    name: str, pid: int, probe: Callable[[], bool], timeout: float, log: Path
) -> float:
    start = time.monotonic()
    while True:
        if not _alive(pid):
            raise StackError(f"{name} exited during start-up; last lines of {log}:\n{_log_tail(log)}")
        if probe():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            _terminate(name, pid)
            raise StackError(
                f"{name} did not become ready within {timeout:.0f}s and was stopped; "
                f"raise STACK_READY_TIMEOUT or read {log}:\n{_log_tail(log)}"
            )
        time.sleep(0.5)


def _terminate(name: str, pid: int, grace: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # Reap the process if it is our own child, so that it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    _pid_file(name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- probes


def kafka_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the broker serves metadata (not merely when its port is open)."""
    port = bootstrap.rpartition(":")[2]
    if _port_free(int(port)):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({
        "bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000), "log_level": 0,
    })
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return bool(meta.brokers)


def cassandra_answers(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when CQL answers `SELECT release_version FROM system.local`."""
    if _port_free(port):
        return False
    import logging

    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.io.asyncioreactor import AsyncioConnection
    from cassandra.policies import WhiteListRoundRobinPolicy

    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=timeout
    )
    cluster = Cluster(
        [host], port=port, connect_timeout=timeout, control_connection_timeout=timeout,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5,
        # This probe opens and shuts down a cluster per attempt, often while the node still refuses
        # connections; the driver's libev reactor can crash the process in that shutdown race.
        connection_class=AsyncioConnection,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return row is not None
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        cluster.shutdown()


def registry_answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- services


def _ready_timeout() -> float:
    return float(os.environ.get("STACK_READY_TIMEOUT", "180"))


def _start_kafka(ports: Ports, keep_data: bool = False) -> None:
    java = _require_java()
    classpath = os.pathsep.join(_maven_paths("kafka"))
    home = state_dir() / "kafka"
    data = home / "data"
    keep_data = keep_data and (data / "meta.properties").exists()
    if not keep_data:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
    props = home / "server.properties"
    props.write_text(
        (HERE / "kafka" / "server.properties").read_text().format(
            host=HOST, port=ports.kafka, controller_port=ports.kafka_controller, data=data,
        )
    )
    jvm = [
        java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={home}",
        "-cp", classpath,
    ]
    if not keep_data:
        cluster_id = (_storage_tool(jvm, "random-uuid").strip().splitlines() or [""])[-1]
        if not cluster_id:
            raise StackError("Kafka's StorageTool random-uuid printed no cluster id")
        _storage_tool(jvm, "format", "-t", cluster_id, "-c", str(props))
    _spawn("kafka", [*jvm, "kafka.Kafka", str(props)], cwd=home)


def _storage_tool(jvm: list[str], *args: str) -> str:
    """Kafka's StorageTool (cluster id, storage format); a failure says which step and why."""
    try:
        proc = subprocess.run([*jvm, "kafka.tools.StorageTool", *args], capture_output=True, text=True,
                              check=False, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"Kafka's StorageTool {args[0]} did not finish within 120s") from exc
    if proc.returncode != 0:
        raise StackError(f"Kafka's StorageTool {args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _cassandra_jvm_flags(jamm: str) -> list[str]:
    # From Cassandra's conf/jvm17-server.options: the module openings Java 17 needs.
    exports = [
        "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
        "java.base/java.lang.ref", "jdk.unsupported/sun.misc",
        "jdk.compiler/com.sun.tools.javac.file", "jdk.attach/sun.tools.attach",
    ]
    opens = [
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math",
        "java.base/jdk.internal.module", "java.base/jdk.internal.util.jar",
        "jdk.management/com.sun.management.internal", "java.base/sun.nio.ch", "java.base/java.io",
        "java.base/java.lang.reflect", "jdk.compiler/com.sun.tools.javac", "java.base/java.lang",
        "java.base/java.util",
    ]
    flags = [f"--add-exports={m}=ALL-UNNAMED" for m in exports]
    flags += [f"--add-opens={m}=ALL-UNNAMED" for m in opens]
    flags += [
        f"-javaagent:{jamm}",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxGCPauseMillis=300",
        "-Xss256k",
    ]
    return flags


def _start_cassandra(ports: Ports, keep_data: bool = False) -> None:
    java = _require_java()
    jars = _maven_paths("cassandra")
    jamm = next((j for j in jars if Path(j).name.startswith("jamm-")), None)
    if jamm is None:
        raise StackError("the Cassandra classpath has no jamm jar; stack/pom.xml is broken")
    home = state_dir() / "cassandra"
    if home.exists() and not keep_data:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            shutil.rmtree(home / sub, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "cassandra.yaml"
    conf.write_text(
        (HERE / "cassandra" / "cassandra.yaml").read_text().format(
            host=HOST, cql_port=ports.cql, storage_port=ports.cassandra_storage, home=home,
        )
    )
    heap = os.environ.get("STACK_CASSANDRA_HEAP", "1G")
    cmd = [
        java, f"-Xms{heap}", f"-Xmx{heap}", *_cassandra_jvm_flags(jamm),
        f"-Dcassandra.config=file://{conf}",
        f"-Dcassandra.logdir={home}",
        f"-Dcassandra.storagedir={home}",
        f"-Dlogback.configurationFile={HERE / 'cassandra' / 'logback.xml'}",
        "-Dcassandra-foreground=yes",
        # A single throwaway node: skip the waits that only matter for real clusters.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-Dcassandra.ring_delay_ms=1000",
        "-cp", os.pathsep.join(jars),
        "org.apache.cassandra.service.CassandraDaemon",
    ]
    _spawn("cassandra", cmd, cwd=home)


def _registry_jar() -> Path:
    """Unpack the registry archive once into the cache and return its runnable jar."""
    archive = next(p for p in _maven_paths("registry") if p.endswith(".tar.gz"))
    target = cache_dir() / Path(archive).name.removesuffix(".tar.gz")
    if not target.is_dir():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(target)
    runners = sorted(target.glob("*-runner.jar")) or sorted(target.glob("quarkus-run.jar"))
    if not runners:
        raise StackError(f"no runnable jar in {target}; delete that directory and retry")
    return runners[0]


def _start_registry(ports: Ports, keep_data: bool = False) -> None:
    java = _require_java()
    jar = _registry_jar()
    home = state_dir() / "registry"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        java, "-Xms128m", "-Xmx512m",
        f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={ports.registry}",
        "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.\"io.apicurio\".level=INFO",
        "-jar", str(jar),
    ]
    _spawn("registry", cmd, cwd=home)


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    start: Callable[..., None]
    probe: Callable[[Endpoints], bool]
    ports: Callable[[Ports], list[tuple[str, int]]]


SERVICE_TABLE: dict[str, Service] = {
    "kafka": Service(
        "kafka", _start_kafka, lambda e: kafka_answers(e.bootstrap_servers),
        lambda p: [("STACK_KAFKA_PORT", p.kafka), ("STACK_KAFKA_CONTROLLER_PORT", p.kafka_controller)],
    ),
    "cassandra": Service(
        "cassandra", _start_cassandra, lambda e: cassandra_answers(e.cql_host, e.cql_port),
        lambda p: [("STACK_CQL_PORT", p.cql), ("STACK_CASSANDRA_STORAGE_PORT", p.cassandra_storage)],
    ),
    "registry": Service(
        "registry", _start_registry, lambda e: registry_answers(e.registry_url),
        lambda p: [("STACK_REGISTRY_PORT", p.registry)],
    ),
}


def kafka_tool(main_class: str, *args: str, timeout: float = 120) -> str:
    """Run one of Kafka's own command-line tools (e.g. ConsumerGroupCommand) and return its output."""
    java = _require_java()
    classpath = os.pathsep.join(_maven_paths("kafka"))
    cmd = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.xml'}",
           f"-Dkafka.logs.dir={state_dir() / 'kafka'}", "-cp", classpath, main_class, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise StackError(f"{main_class} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def consumer_group_describe(bootstrap: str, group: str) -> dict[tuple[str, int], tuple[int | None, int, int | None]]:
    """Kafka's ConsumerGroupCommand --describe: (topic, partition) -> (current offset, log end, lag)."""
    out = kafka_tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                     "--bootstrap-server", bootstrap, "--describe", "--group", group)
    rows: dict[tuple[str, int], tuple[int | None, int, int | None]] = {}
    header: list[str] | None = None
    for line in out.splitlines():
        cells = line.split()
        if not cells:
            continue
        if cells[0] == "GROUP":
            header = cells
            continue
        if header is None or len(cells) < 6:
            continue
        record = dict(zip(header, cells, strict=False))

        def number(text: str) -> int | None:
            return None if text == "-" else int(text)

        rows[(record["TOPIC"], int(record["PARTITION"]))] = (
            number(record["CURRENT-OFFSET"]), int(record["LOG-END-OFFSET"]), number(record["LAG"]))
    return rows


# --------------------------------------------------------------------------- commands


def _state_file() -> Path:
    return state_dir() / "stack.json"


def _record_ports(ports: Ports) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(dataclasses.asdict(ports)))


def _running_ports() -> Ports | None:
    try:
        return Ports(**json.loads(_state_file().read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def up(services: Iterable[str] = DEFAULT_SERVICES, ports: Ports | None = None,
       echo: Callable[[str], None] = print) -> tuple[Endpoints, list[str]]:
    """Start what is not running yet, wait until every asked service answers.

    Returns the endpoints and the names of the services this call started (so that a caller
    can stop exactly those).
    """
    wanted = list(dict.fromkeys(services))
    for name in wanted:
        if name not in SERVICE_TABLE:
            raise StackError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    recorded = _running_ports()
    if recorded is not None and any(_read_pid(s) for s in SERVICES):
        if ports is not None and ports != recorded:
            raise StackError(
                f"a stack is already running from {state_dir()} with other ports; "
                "run `down` first or set STACK_DIR to use another state directory"
            )
        ports = recorded
    ports = ports or Ports.from_env()
    _record_ports(ports)
    endpoints = Endpoints.for_ports(ports)
    started: list[str] = []
    timeout = _ready_timeout()
    for name in wanted:
        svc = SERVICE_TABLE[name]
        pid = _read_pid(name)
        if pid is None:
            _check_ports_free(name, svc.ports(ports))
            echo(f"starting {name} ...")
            svc.start(ports)
            pid = _read_pid(name)
            if pid is None:
                log = state_dir() / name / "console.log"
                raise StackError(f"{name} exited at once; last lines of {log}:\n{_log_tail(log)}")
            started.append(name)
        took = _wait_ready(name, pid, functools.partial(svc.probe, endpoints), timeout,
                           state_dir() / name / "console.log")
        echo(f"{name} ready (pid {pid}, {took:.1f}s)")
    return endpoints, started


def stop_service(name: str, kill: bool = False) -> None:
    """Stop one running service and keep its data (for fault tests); SIGKILL when `kill`."""
    pid = _read_pid(name)
    if pid is None:
        raise StackError(f"{name} is not running")
    if kill:
        os.killpg(pid, signal.SIGKILL)
    _terminate(name, pid)


def start_service(name: str, echo: Callable[[str], None] = print) -> float:
    """Start a stopped service again on its recorded ports with its data kept; wait until it answers."""
    ports = _running_ports() or Ports.from_env()
    svc = SERVICE_TABLE[name]
    if _read_pid(name) is not None:
        raise StackError(f"{name} is already running")
    _check_ports_free(name, svc.ports(ports))
    svc.start(ports, keep_data=True)
    pid = _read_pid(name)
    if pid is None:
        raise StackError(f"{name} exited at once")
    took = _wait_ready(name, pid, functools.partial(svc.probe, Endpoints.for_ports(ports)), _ready_timeout(),
                       state_dir() / name / "console.log")
    echo(f"{name} started again (pid {pid}, {took:.1f}s)")
    return took


def down(services: Iterable[str] = SERVICES, echo: Callable[[str], None] = print) -> None:
    for name in services:
        pid = _read_pid(name)
        if pid is not None:
            echo(f"stopping {name} (pid {pid}) ...")
            _terminate(name, pid)
        _pid_file(name).unlink(missing_ok=True)
    if not any(_read_pid(s) for s in SERVICES):
        # Data directories are throwaway; unpacked archives and Maven's cache are kept.
        shutil.rmtree(state_dir(), ignore_errors=True)


def status() -> dict[str, dict[str, object]]:
    ports = _running_ports() or Ports.from_env()
    endpoints = Endpoints.for_ports(ports)
    report: dict[str, dict[str, object]] = {}
    for name in SERVICES:
        pid = _read_pid(name)
        report[name] = {
            "pid": pid,
            "running": pid is not None,
            "answers": bool(pid) and SERVICE_TABLE[name].probe(endpoints),
        }
    return report


def _print_endpoints(endpoints: Endpoints, services: Iterable[str]) -> None:
    services = set(services)
    if "kafka" in services:
        print(f"KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}")
    if "cassandra" in services:
        print(f"CASSANDRA_CONTACT_POINT={endpoints.cql_host}:{endpoints.cql_port}")
    if "registry" in services:
        print(f"SCHEMA_REGISTRY_URL={endpoints.registry_url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cluster_help = "the three-node cluster (stack/cluster.py) instead of the single-node stack"
    p_up = sub.add_parser("up", help="start services and wait until they answer")
    p_up.add_argument("services", nargs="*", help=f"any of {', '.join(SERVICES)}")
    p_up.add_argument("--cluster", action="store_true", help=cluster_help)
    p_down = sub.add_parser("down", help="stop services and remove their data")
    p_down.add_argument("services", nargs="*", help="default: all (with --cluster: member names)")
    p_down.add_argument("--cluster", action="store_true", help=cluster_help)
    p_status = sub.add_parser("status", help="tell what runs")
    p_status.add_argument("--cluster", action="store_true", help=cluster_help)
    p_status.add_argument("--sample", type=float, metavar="SECONDS",
                          help="with --cluster: also measure each member's CPU use over this many seconds")
    for command, what in MEMBER_COMMANDS.items():
        p_member = sub.add_parser(command, help=f"cluster members: {what}")
        p_member.add_argument("members", nargs="+", help="cassandra-1..3, kafka-1..3")
        p_member.add_argument("--cluster", action="store_true", help="required: members belong to the cluster")
    args = parser.parse_args(argv)
    try:
        if args.command in MEMBER_COMMANDS or getattr(args, "cluster", False):
            return _cluster_main(args)
        if args.command == "up":
            endpoints, _ = up(args.services or DEFAULT_SERVICES)
            _print_endpoints(endpoints, args.services or DEFAULT_SERVICES)
        elif args.command == "down":
            down(args.services or SERVICES)
        else:
            report = status()
            for name, info in report.items():
                state = "not running"
                if info["running"]:
                    answers = "answers" if info["answers"] else "not answering"
                    state = f"running (pid {info['pid']}), {answers}"
                print(f"{name:10s} {state}")
            if any(info["running"] for info in report.values()):
                _print_endpoints(Endpoints.for_ports(_running_ports() or Ports.from_env()),
                                 [n for n, i in report.items() if i["running"]])
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


MEMBER_COMMANDS = {
    "stop": "stop gracefully (SIGTERM) and wait, data kept",
    "kill": "SIGKILL, data kept",
    "pause": "SIGSTOP",
    "resume": "SIGCONT and wait until ready",
    "start": "start again with the data kept and wait until ready",
}


def _cluster_main(args: argparse.Namespace) -> int:
    from stack import cluster

    if args.command in MEMBER_COMMANDS and not args.cluster:
        raise StackError(f"`{args.command}` acts on members of the cluster: add --cluster")
    if args.command == "up":
        if args.services:
            raise StackError("up --cluster starts the whole cluster; it takes no service names")
        endpoints, _ = cluster.up()
        _print_cluster_endpoints(endpoints)
    elif args.command == "down":
        cluster.down(args.services or None)
    elif args.command == "status":
        report = cluster.status()
        sampled = cluster.usage(args.sample) if args.sample else {}
        for name, info in report.items():
            line = f"{name:12s} {info['state']}"
            if info["pid"]:
                answers = "answers" if info["answers"] else "not answering"
                line += f" (pid {info['pid']}), {answers}, RSS {info['rss_mib'] or 0:.0f} MiB"
            if name in sampled and sampled[name][1] is not None:
                line += f", CPU {sampled[name][1]:.1f}% of a core over {args.sample:g}s"
            print(line)
        if any(info["pid"] for info in report.values()):
            _print_cluster_endpoints(cluster.endpoints())
    elif args.command == "stop":
        for name, took in cluster.stop(*args.members).items():
            print(f"{name} stopped ({took:.1f}s)")
    elif args.command == "kill":
        cluster.kill(*args.members)
    elif args.command == "pause":
        cluster.pause(*args.members)
    elif args.command == "resume":
        cluster.resume(*args.members)
        cluster.wait_ready(*args.members, echo=print)
    else:
        cluster.start(*args.members, echo=print)
    return 0


def _print_cluster_endpoints(endpoints: Any) -> None:
    print(f"KAFKA_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}")
    print(f"CASSANDRA_CONTACT_POINTS={','.join(endpoints.cql_hosts)}")
    print(f"CASSANDRA_PORT={endpoints.cql_port}")
    print(f"CASSANDRA_LOCAL_DC={endpoints.datacenter}")


if __name__ == "__main__":
    sys.exit(main())
