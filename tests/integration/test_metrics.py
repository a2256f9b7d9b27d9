"""Lag, counters and health endpoints of the running daemon, against Kafka's own ConsumerGroupCommand."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack import localstack
from tests.daemon import Daemon, Deployment, framed_encoder
from tests.helpers import DRIVER_SCHEMA, free_port, wait_for
from tests.proxy import TcpProxy
from tests.workload import generate

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    _, text = get(port, "/metrics")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def partition_lag(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[tuple[str, int], float]:
    return {(dict(k)["topic"], int(dict(k)["partition"])): v
            for k, v in metrics.get("feature_consumer_lag_offsets", {}).items()}


@pytest.fixture
def deployment(make_deployment: Callable[..., Deployment]) -> Deployment:
    return make_deployment("met", batch={"max_records": 100, "max_wait_ms": 100},
                           extra={"metrics": {"lag_interval_s": 0.5, "stuck_after_s": 4}})


def log_ends(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[tuple[str, int], float]:
    return {(dict(k)["topic"], int(dict(k)["partition"])): v
            for k, v in metrics.get("feature_consumer_log_end_offset", {}).items()}


def test_exported_lag_matches_consumer_group_command_during_and_after_a_backlog(deployment, daemons, running
                                                                                ) -> None:
    """The backlog is held in place while the figures are compared, so the comparison never races the drain:
    Cassandra is reachable only through a proxy, which is closed while the backlog waits. Nothing can be
    written, so nothing is committed, and nothing is produced meanwhile: every partition's lag is fixed,
    and the exported figure must equal Kafka's own exactly."""
    proxy = TcpProxy(deployment.endpoints.cql_host, deployment.endpoints.cql_port)
    proxy.open()
    running.append(proxy.close)
    port = free_port()
    deployment.extra["cassandra"] = {"port": proxy.port}
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment))
    # First some committed progress on every partition, so the held lag is measured from real commits.
    deployment.produce(generate(entities=200, events_per_entity=1, seed=20, poison_rate=0.0))
    deployment.wait_caught_up(daemons=daemons)
    assert all((r.committed or 0) > 0 for r in deployment.lag()), deployment.lag()

    proxy.close()
    deployment.produce(generate(entities=6000, events_per_entity=1, seed=21, poison_rate=0.0))
    kafka = localstack.consumer_group_describe(deployment.endpoints.bootstrap_servers, deployment.group)
    assert len(kafka) == deployment.partitions and all(lag for _, _, lag in kafka.values()), kafka
    # The collector has asked for the log ends since the backlog was produced (every 0.5 s here).
    wait_for(lambda: log_ends(scrape(port)) == {tp: end for tp, (_, end, _) in kafka.items()},
             timeout_s=30, what="the exported log end offsets to reach the produced backlog")
    held = partition_lag(scrape(port))
    again = localstack.consumer_group_describe(deployment.endpoints.bootstrap_servers, deployment.group)
    assert again == kafka, "the backlog moved while it was held"
    assert held == {tp: lag for tp, (_, _, lag) in kafka.items()}, (held, kafka)
    daemons[0].assert_alive()

    proxy.open()
    deployment.wait_caught_up(daemons=daemons)
    final = localstack.consumer_group_describe(deployment.endpoints.bootstrap_servers, deployment.group)
    assert {tp: v[2] for tp, v in final.items()} == {tp: 0 for tp in final}
    assert partition_lag(scrape(port)) == {tp: 0 for tp in final}


def test_counters_and_freshness_move_as_records_flow(deployment, daemons) -> None:
    port = free_port()
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment))
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="readiness")
    view = (("view", "driver_hourly_stats"),)
    events = generate(entities=50, events_per_entity=4, seed=22, poison_rate=0.05)
    deployment.produce(events)
    deployment.wait_caught_up(daemons=daemons)
    m = wait_for(lambda: (lambda s: s if s.get("feature_consumer_records_written_total", {}).get(view) else None)(
        scrape(port)), what="written rows")
    assert m["feature_consumer_records_consumed_total"][view] == len([e for e in events if not e.poison])
    written = m["feature_consumer_records_written_total"][view]
    assert written >= 50
    assert m["feature_consumer_event_to_online_seconds_count"][view] == written
    assert m["feature_consumer_write_latency_seconds_count"][view] > 0
    dead = sum(m["feature_consumer_records_dead_lettered_total"].values())
    assert dead == len([e for e in events if e.poison])
    assert m["feature_consumer_assigned_partitions"][()] == deployment.partitions
    assert m["feature_consumer_seconds_since_last_commit"][()] < 60
    assert m["feature_consumer_rebalances_total"][(("kind", "assign"),)] >= 1


def test_idle_partitions_read_zero_and_a_revoked_partition_is_no_longer_reported(deployment, daemons) -> None:
    port_a, port_b = free_port(), free_port()
    deployment.write_config(metrics_port=port_a)
    daemons.append(Daemon(deployment, "a"))
    wait_for(lambda: get(port_a, "/readyz")[0] == 200, what="readiness of a")
    # Nothing produced: every partition is idle and caught up.
    idle = wait_for(lambda: (lambda lag: lag if len(lag) == deployment.partitions else None)(
        partition_lag(scrape(port_a))), what="lag series for every partition")
    assert set(idle.values()) == {0}
    seconds = scrape(port_a)["feature_consumer_lag_seconds"]
    assert set(seconds.values()) == {0}

    deployment.write_config(metrics_port=port_b)
    daemons.append(Daemon(deployment, "b"))
    wait_for(lambda: get(port_b, "/readyz")[0] == 200, what="readiness of b")
    def split() -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]] | None:
        a, b = partition_lag(scrape(port_a)), partition_lag(scrape(port_b))
        return (a, b) if a and b and set(a) | set(b) == set(idle) and not set(a) & set(b) else None

    owned_a, owned_b = wait_for(split, what="the partitions split between a and b, each reported once")
    assert len(owned_a) < deployment.partitions
    assert set(owned_a.values()) | set(owned_b.values()) == {0}


def test_lag_stays_right_while_partitions_are_paused(deployment, daemons) -> None:
    port = free_port()
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment))
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="readiness")
    cassandra = localstack._read_pid("cassandra")
    assert cassandra is not None
    os.kill(cassandra, signal.SIGSTOP)
    try:
        deployment.produce(generate(entities=40, events_per_entity=2, seed=23, poison_rate=0.0))
        paused = wait_for(lambda: (lambda s: s if s.get("feature_consumer_partition_paused") and
                                   max(s["feature_consumer_partition_paused"].values()) == 1 else None)(scrape(port)),
                          timeout_s=90, what="paused partitions")
        assert paused
        kafka = localstack.consumer_group_describe(deployment.endpoints.bootstrap_servers, deployment.group)
        # A collection of log end offsets since the records were produced (every 0.5 s, whatever Cassandra does).
        wait_for(lambda: log_ends(scrape(port)) == {tp: end for tp, (_, end, _) in kafka.items()}, timeout_s=30,
                 what="the exported log end offsets to reach the produced records")
        ours = partition_lag(scrape(port))
        assert ours == {tp: (v[2] if v[2] is not None else v[1]) for tp, v in kafka.items()}
        assert sum(ours.values()) == 80
    finally:
        os.kill(cassandra, signal.SIGCONT)
    deployment.wait_caught_up(daemons=daemons)
    assert sum(partition_lag(wait_for(lambda: (lambda s: s if sum(partition_lag(s).values()) == 0 else None)(
        scrape(port)), what="lag back to 0")).values()) == 0


def test_readyz_waits_for_an_assignment_and_for_cassandra(stack, deployment, daemons) -> None:
    port = free_port()
    deployment.extra["kafka"] = {"bootstrap_servers": "127.0.0.1:1"}  # no broker: no assignment
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment, "no-kafka"))
    wait_for(lambda: _listening(port), what="the endpoint")
    time.sleep(3)
    assert get(port, "/readyz") == (503, "no assignment yet\n")
    assert get(port, "/healthz")[0] == 200
    daemons.pop().stop_quietly()

    port = free_port()
    deployment.extra["kafka"] = {}
    deployment.extra["cassandra"] = {"port": 1, "connect_timeout_s": 1}
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment, "no-cassandra"))
    wait_for(lambda: _listening(port), what="the endpoint")
    # It has its assignment (Kafka answers), and Cassandra never answers on port 1: the state holds.
    wait_for(lambda: get(port, "/readyz") == (503, "cassandra does not answer\n"), timeout_s=60,
             what="/readyz to name Cassandra")
    time.sleep(2)
    assert get(port, "/readyz") == (503, "cassandra does not answer\n")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_healthz_turns_false_when_the_loop_is_stuck(make_deployment, registry_url, daemons, running) -> None:
    """The loop is stuck only where it blocks: the one call it makes in its own thread that can hang is the
    registry fetch of a new schema id (bounded by schema_registry.timeout_s). Cassandra cannot stall it:
    writes are in flight on the writer's thread (tests/faults: a hung Cassandra keeps /healthz at 200)."""
    host_port = registry_url.split("//")[1].split("/")[0]
    proxy = TcpProxy(host_port.split(":")[0], int(host_port.split(":")[1]))
    proxy.open()
    running.append(proxy.close)
    deployment = make_deployment("met_stuck", registry_url=registry_url.replace(host_port, proxy.url_host),
                                 extra={"metrics": {"lag_interval_s": 0.5, "stuck_after_s": 4},
                                        "schema_registry": {"timeout_s": 30}})
    port = free_port()
    deployment.write_config(metrics_port=port)
    daemons.append(Daemon(deployment))
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="readiness")
    assert get(port, "/healthz")[0] == 200
    proxy.hold()  # the registry hangs: the fetch of the new schema id below blocks the loop
    try:
        schema_v2 = dict(DRIVER_SCHEMA, fields=[*DRIVER_SCHEMA["fields"],
                                                {"name": "region", "type": "string", "default": "eu"}])
        deployment.produce(generate(entities=5, events_per_entity=1, seed=24, poison_rate=0.0),
                           framed_encoder(registry_url, deployment.topic, schema_v2))
        wait_for(lambda: get(port, "/healthz")[0] == 503, timeout_s=60, what="/healthz to fail")
    finally:
        proxy.release()
    wait_for(lambda: get(port, "/healthz")[0] == 200, timeout_s=90, what="/healthz to recover")
    deployment.wait_caught_up(daemons=daemons)
