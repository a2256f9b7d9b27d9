"""The local stack's failure modes end with a message that says what and what to do, never a hang."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from stack import localstack


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "state"))
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
