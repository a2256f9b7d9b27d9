"""`init-schema` and `check` against the real services; configuration errors name the key."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.daemon import Daemon, Deployment
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_init_schema_creates_the_keyspace_and_feasts_table(stack, cql_session, tmp_path: Path) -> None:
    keyspace = f"ks_init_{uuid.uuid4().hex[:8]}"
    dep = Deployment(stack, f"t_{uuid.uuid4().hex[:8]}", keyspace, tmp_path)
    dep.write_config()
    try:
        result = cli("init-schema", "-c", str(dep.config_path), "--create-keyspace")
        assert result.returncode == 0, result.stderr
        assert f'CREATE TABLE IF NOT EXISTS "{keyspace}"."feast_demo_driver_hourly_stats"' in result.stdout
        columns = {r.column_name: (r.kind, r.type) for r in cql_session.execute(
            "SELECT column_name, kind, type FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
            (keyspace, "feast_demo_driver_hourly_stats"))}
        assert columns == {
            "entity_key": ("partition_key", "text"), "feature_name": ("clustering", "text"),
            "value": ("regular", "blob"), "event_ts": ("regular", "timestamp"),
            "created_ts": ("regular", "timestamp"),
        }
        assert cli("init-schema", "-c", str(dep.config_path)).returncode == 0  # idempotent
    finally:
        cql_session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


def test_check_names_what_is_missing_and_passes_once_it_exists(stack, keyspace, tmp_path: Path) -> None:
    dep = Deployment(stack, f"t_{uuid.uuid4().hex[:8]}", keyspace, tmp_path)
    dep.write_config()
    secret = f"pw-{uuid.uuid4().hex}"
    env = {"FEATURE_CONSUMER_KAFKA__SASL_PASSWORD": secret}
    first = cli("check", "-c", str(dep.config_path), env=env)
    assert first.returncode == 1
    assert f"FAIL  kafka: topics missing on {stack.bootstrap_servers}: ['{dep.topic}', '{dep.dead_letter_topic}']" \
        in first.stdout
    assert "FAIL  cassandra:" in first.stdout and "run `feature-consumer init-schema`" in first.stdout
    dep.create_topics()
    assert cli("init-schema", "-c", str(dep.config_path)).returncode == 0
    second = cli("check", "-c", str(dep.config_path), env=env)
    assert second.returncode == 0, second.stdout
    assert "ok    kafka" in second.stdout and "ok    cassandra" in second.stdout
    assert secret not in first.stdout + first.stderr + second.stdout + second.stderr


def test_check_reports_an_unreachable_cassandra_by_name(stack, tmp_path: Path) -> None:
    dep = Deployment(stack, f"t_{uuid.uuid4().hex[:8]}", "feast", tmp_path,
                     extra={"cassandra": {"port": 1, "connect_timeout_s": 2}})
    dep.write_config()
    result = cli("check", "-c", str(dep.config_path))
    assert result.returncode == 1
    assert "FAIL  cassandra: Cassandra at ['127.0.0.1']:1 is unreachable" in result.stdout


def test_a_configuration_error_exits_2_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    config = yaml.safe_load((Path(__file__).parents[2] / "examples" / "driver_stats.yaml").read_text())
    config["views"][0]["features"][0]["dtype"] = "Float16"
    config["views"][0]["schema"]["file"] = str(Path(__file__).parents[2] / "schemas" / "driver_hourly_stats.avsc")
    path.write_text(yaml.safe_dump(config))
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    assert "view 'driver_hourly_stats': feature 'conv_rate'.dtype: unknown dtype 'Float16'" in result.stderr


def test_sigterm_during_start_up_exits_cleanly(stack, keyspace, tmp_path: Path) -> None:
    import signal
    import time

    dep = Deployment(stack, f"t_{uuid.uuid4().hex[:8]}", keyspace, tmp_path)
    dep.write_config()
    for delay in (0.0, 1.5):  # while importing, and while connecting
        proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "run", "-c", str(dep.config_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Not before its handler is installed (the first thing `main` does): a signal before that kills it,
        # as it would any process. Python's own start-up is not the daemon's.
        wait_for(lambda pid=proc.pid: handles_sigterm(pid), timeout_s=30, what="the SIGTERM handler")
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out


def test_sigusr1_prints_every_threads_stack_and_the_daemon_goes_on(stack, keyspace, tmp_path: Path) -> None:
    import signal

    dep = Deployment(stack, f"t_{uuid.uuid4().hex[:8]}", keyspace, tmp_path)
    dep.create_topics()
    dep.write_config()
    daemon = Daemon(dep)
    try:
        wait_for(lambda: "assigned [" in daemon.log(), timeout_s=60, what="the loop to hold its partitions")
        daemon.proc.send_signal(signal.SIGUSR1)
        # Every thread's stack, the loop's own among them (faulthandler writes them from its signal
        # handler, one after another); the signal stopped nothing.
        wait_for(lambda: "consumer/pipeline.py" in daemon.log_path.read_text(), timeout_s=10,
                 what="the loop's stack")
        assert "most recent call first" in daemon.log_path.read_text()
        daemon.assert_alive()
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()


def handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (the SigCgt mask of /proc/PID/status)."""
    import signal

    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))
