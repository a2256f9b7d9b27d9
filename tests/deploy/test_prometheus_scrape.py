"""A real Prometheus scrapes the running daemon: the group's lag it holds is what Kafka's own
ConsumerGroupCommand --describe reports, exactly, during a backlog held in place and after it drains.
The PrometheusRule's recording rules run in the same Prometheus and agree as well."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import localstack
from tests.daemon import Daemon, Deployment
from tests.deploy.manifests import rule_groups
from tests.helpers import free_port, wait_for
from tests.prometheus import Prometheus
from tests.proxy import TcpProxy
from tests.workload import generate

pytestmark = pytest.mark.integration

SCRAPE_S = 1.0


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prom = Prometheus(workdir, [f"127.0.0.1:{metrics_port}"], SCRAPE_S, rule_groups())
    yield prom
    prom.stop()


def test_prometheus_reports_the_lag_kafka_reports_during_a_backlog_and_after(
    stack: localstack.Endpoints, make_deployment: Callable[..., Deployment], daemons: list[Daemon],
    prometheus: Prometheus, metrics_port: int, running: list[Any],
) -> None:
    """The backlog is held in place while it is compared (Cassandra behind a closed proxy: nothing is written,
    so nothing is committed, and nothing is produced meanwhile): Prometheus must hold Kafka's figures
    exactly, partition by partition, and again once the backlog is written."""
    proxy = TcpProxy(stack.cql_host, stack.cql_port)
    proxy.open()
    running.append(proxy.close)
    deployment = make_deployment("prom", partitions=3,
                                 extra={"metrics": {"lag_interval_s": 0.5}, "cassandra": {"port": proxy.port}})
    deployment.write_config(metrics_port=metrics_port)
    daemons.append(Daemon(deployment))
    deployment.produce(generate(entities=300, events_per_entity=1, seed=80, poison_rate=0.0))
    deployment.wait_caught_up(daemons=daemons)  # every partition has a commit: Kafka reports its lag

    proxy.close()
    deployment.produce(generate(entities=6_000, events_per_entity=1, seed=81, poison_rate=0.0))
    bootstrap, group = deployment.endpoints.bootstrap_servers, deployment.group
    kafka = localstack.consumer_group_describe(bootstrap, group)
    assert all(v[2] for v in kafka.values()), kafka
    lag = 'feature_consumer_lag_offsets{job="feature-consumer"}'
    ends = 'feature_consumer_log_end_offset{job="feature-consumer"}'
    # A collection of the log ends since the backlog was produced, and a scrape after it.
    wait_for(lambda: prometheus.per_partition(ends) == {tp: float(v[1]) for tp, v in kafka.items()}, 60,
             "Prometheus to hold the backlog's log ends")
    wait_for(lambda: prometheus.per_partition(lag) == {tp: float(v[2]) for tp, v in kafka.items()}, 10 * SCRAPE_S,
             "Prometheus's lag to be Kafka's")
    assert localstack.consumer_group_describe(bootstrap, group) == kafka, "the backlog moved while it was held"
    daemons[0].assert_alive()

    proxy.open()
    deployment.wait_caught_up(daemons=daemons, timeout_s=300)
    # Drained: exactly equal, partition by partition, and the recording rule over the group agrees.
    final = localstack.consumer_group_describe(bootstrap, group)
    assert {tp: v[2] for tp, v in final.items()} == {tp: 0 for tp in final}
    wait_for(lambda: prometheus.per_partition(lag) == {tp: 0.0 for tp in final}, 10 * SCRAPE_S,
             "Prometheus's lag to fall to 0")
    committed = prometheus.per_partition('feature_consumer_committed_offset{job="feature-consumer"}')
    assert committed == {tp: float(v[0]) for tp, v in final.items()}
    wait_for(lambda: prometheus.per_partition("feature_consumer:lag_offsets:max") == {tp: 0.0 for tp in final},
             10 * SCRAPE_S, "the recording rule to follow")
