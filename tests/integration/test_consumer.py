"""The daemon against the real Kafka and Cassandra: newest value wins, nothing lost, lag back to 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from stack import localstack
from tests.daemon import Daemon, Deployment, committed_total, wait_for_progress
from tests.helpers import driver_view, wait_for
from tests.proxy import TcpProxy
from tests.workload import compare, expected_state, generate

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(make_deployment: Callable[..., Deployment]) -> Deployment:
    return make_deployment("feat")


def test_out_of_order_duplicate_and_tied_events_end_at_the_newest_value(deployment, reader, daemons) -> None:
    events = generate(entities=150, events_per_entity=8, seed=11)
    deployment.produce(events)
    daemons.append(Daemon(deployment))
    deployment.wait_caught_up(daemons=daemons)

    result = compare(reader.read, driver_view(), expected_state(events))
    assert result.ok, result
    assert result.checked == 150
    poison = [e for e in events if e.poison]
    letters = deployment.dead_letters(expected=len(poison))
    by_origin = {}
    for m in letters:
        headers = {k: v.decode() for k, v in m.headers()}
        assert headers["x-dead-letter-original-topic"] == deployment.topic
        assert headers["x-dead-letter-error-class"] in {"DecodeError", "FramingError"}
        assert headers["x-dead-letter-reason"]
        by_origin[(headers["x-dead-letter-original-partition"], headers["x-dead-letter-original-offset"])] = m
    assert len(by_origin) == len(poison)  # every poison record (at least once)
    assert sorted(m.value() or b"" for m in by_origin.values()) == sorted(e.value() for e in poison)
    assert sorted(m.key() for m in by_origin.values()) == sorted(e.key for e in poison)
    assert daemons[0].terminate() == 0


def test_kill_and_restart_mid_stream_loses_nothing(deployment, reader, daemons) -> None:
    events = generate(entities=300, events_per_entity=10, seed=12, poison_rate=0.0)
    deployment.batch = {"max_records": 200, "max_wait_ms": 100}
    deployment.write_config()
    deployment.produce(events)
    for _ in range(3):
        daemon = Daemon(deployment)
        daemons.append(daemon)
        wait_for_progress(deployment, since=committed_total(deployment))  # it got partitions and wrote some
        daemon.kill()
    daemons.append(Daemon(deployment))
    deployment.wait_caught_up(daemons=daemons[-1:])
    result = compare(reader.read, driver_view(), expected_state(events))
    assert result.ok, result


def test_two_consumers_and_a_rebalance_mid_stream_lose_nothing(deployment, reader, daemons) -> None:
    first = generate(entities=200, events_per_entity=6, seed=13, poison_rate=0.0)
    deployment.produce(first)
    daemons.append(Daemon(deployment, "a"))
    wait_for_progress(deployment)
    daemons.append(Daemon(deployment, "b"))  # joins the group: partitions move mid-stream
    second = generate(entities=200, events_per_entity=6, seed=14, poison_rate=0.0)
    second = [type(e)(e.index + len(first), *list(e.__dict__.values())[1:]) for e in second]
    deployment.produce(second)
    deployment.wait_caught_up(daemons=daemons)
    assert daemons[1].terminate() == 0  # leaves: its partitions go back to the first member
    third = generate(entities=200, events_per_entity=3, seed=15, poison_rate=0.0)
    third = [type(e)(e.index + len(first) + len(second), *list(e.__dict__.values())[1:]) for e in third]
    deployment.produce(third)
    deployment.wait_caught_up(daemons=daemons[:1])
    result = compare(reader.read, driver_view(), expected_state(first + second + third))
    assert result.ok, result


def lag_command(deployment: Deployment, *args: str) -> list[list[str]]:
    out = subprocess.run([sys.executable, "-m", "consumer.cli", "lag", "-c", str(deployment.config_path), *args],
                         capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()[2:]]


def test_lag_command_shows_zero_and_matches_kafkas_own_tool(deployment, daemons) -> None:
    deployment.produce(generate(entities=50, events_per_entity=4, seed=16, poison_rate=0.05))
    daemons.append(Daemon(deployment))
    deployment.wait_caught_up(daemons=daemons)
    lines = lag_command(deployment)
    assert len(lines) == deployment.partitions
    kafka = localstack.consumer_group_describe(deployment.endpoints.bootstrap_servers, deployment.group)
    for topic, partition, current, end, lag in lines:
        assert (int(current), int(end), int(lag)) == (*kafka[(topic, int(partition))][:2], 0)


def test_lag_command_for_a_group_that_never_committed(deployment) -> None:
    # A group the broker has never seen: its coordinator may first answer NOT_COORDINATOR, which made
    # librdkafka's admin offset listing crash the process.
    deployment.produce(generate(entities=10, events_per_entity=2, seed=17))
    lines = lag_command(deployment, "--group", f"{deployment.group}-never-seen")
    assert len(lines) == deployment.partitions
    assert all(current == "-" and lag == "-" for _, _, current, _, lag in lines)
    assert sum(int(end) for _, _, _, end, _ in lines) == 20


def test_sigterm_drains_commits_and_a_restart_resumes(deployment, reader, daemons, running) -> None:
    # Records are held in flight by Cassandra being out of reach (behind a closed proxy), not by a timer.
    proxy = TcpProxy(deployment.endpoints.cql_host, deployment.endpoints.cql_port)
    proxy.open()
    proxy.close()
    running.append(proxy.close)
    deployment.extra["cassandra"] = {"port": proxy.port}
    deployment.write_config()
    daemon = Daemon(deployment)
    daemons.append(daemon)
    events = generate(entities=40, events_per_entity=3, seed=17, poison_rate=0.0)
    deployment.produce(events)
    wait_for(lambda: "keeps failing" in daemon.log(), timeout_s=60, what="the writes to wait for Cassandra")
    assert deployment.total_lag() != 0
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    proxy.open()  # Cassandra answers again while the daemon drains
    assert daemon.terminate(timeout_s=30) == 0
    assert time.monotonic() - started < 20
    assert deployment.total_lag() == 0
    assert compare(reader.read, driver_view(), expected_state(events)).ok
    assert "stopped" in daemon.log()

    more = generate(entities=40, events_per_entity=2, seed=18, poison_rate=0.0)
    more = [type(e)(e.index + len(events), *list(e.__dict__.values())[1:]) for e in more]
    deployment.produce(more)
    daemons.append(Daemon(deployment, "again"))
    deployment.wait_caught_up(daemons=daemons[-1:])
    assert compare(reader.read, driver_view(), expected_state(events + more)).ok
