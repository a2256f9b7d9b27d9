"""A real Prometheus scrapes the running daemon: the group's lag it holds is what Kafka's own
ConsumerGroupCommand --describe reports, within one scrape, during a backlog and after it drains.
The PrometheusRule's recording rules run in the same Prometheus and agree as well."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack import localstack
from tests.daemon import Daemon, Deployment
from tests.deploy.manifests import rule_groups
from tests.helpers import free_port, wait_for
from tests.prometheus import Prometheus
from tests.workload import generate

pytestmark = pytest.mark.integration

SCRAPE_S = 1.0
BATCH = 50  # records per batch, so per commit: the most one commit moves the lag
# A daemon that stops making progress must fail the test, not hang it: 600 s lets the 40,000 records
# drain at as little as 67 a second, so a stall trips it and a slow machine does not.
DRAIN_DEADLINE_S = 600.0


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
    make_deployment: Callable[..., Deployment], daemons: list[Daemon], prometheus: Prometheus, metrics_port: int
) -> None:
    deployment = make_deployment("prom", partitions=3, batch={"max_records": BATCH, "max_wait_ms": 100},
                                 # One conditional write at a time: a backlog that lasts through several
                                 # of ConsumerGroupCommand's runs (a JVM each).
                                 extra={"metrics": {"lag_interval_s": 0.5}, "cassandra": {"max_in_flight": 1}})
    deployment.write_config(metrics_port=metrics_port)
    deployment.produce(generate(entities=40_000, events_per_entity=1, seed=81, poison_rate=0.0))
    daemons.append(Daemon(deployment))
    lag = 'feature_consumer_lag_offsets{job="feature-consumer"}'
    wait_for(lambda: len(prometheus.per_partition(lag)) == deployment.partitions, 60, "every partition in Prometheus")

    bootstrap, group = deployment.endpoints.bootstrap_servers, deployment.group
    rounds_with_lag = 0
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while True:
        before = prometheus.per_partition(lag)
        kafka = localstack.consumer_group_describe(bootstrap, group)
        # Wait out one scrape, so that `after` was sampled after Kafka answered.
        time.sleep(SCRAPE_S + 0.3)
        after = prometheus.per_partition(lag)
        # Nothing is produced meanwhile, so the lag only falls: Kafka's figure lies between Prometheus's
        # sample before and its sample one scrape later, give or take the one commit in flight.
        for tp, (_, _, kafka_lag) in kafka.items():
            if kafka_lag is None:
                continue  # nothing committed on it yet: Kafka reports no lag ("-") to compare with
            assert tp in before and tp in after, (tp, kafka, before, after)
            assert after[tp] - BATCH <= kafka_lag <= before[tp] + BATCH, (tp, before[tp], kafka_lag, after[tp])
        if sum(after.values()) == 0 and all(v[2] == 0 for v in kafka.values()):
            break
        rounds_with_lag += any(v[2] for v in kafka.values())
        daemons[0].assert_alive()
        if time.monotonic() > deadline:
            lags = {tp: v[2] for tp, v in kafka.items()}
            pytest.fail(f"the backlog did not drain within {DRAIN_DEADLINE_S:.0f} s: lag per partition "
                        f"{lags} in Kafka, {after} in Prometheus")
    assert rounds_with_lag >= 2, "the backlog drained before the comparison had anything to compare"

    # Drained: exactly equal, partition by partition, and the recording rule over the group agrees.
    final = localstack.consumer_group_describe(bootstrap, group)
    time.sleep(SCRAPE_S + 0.3)
    assert prometheus.per_partition(lag) == {tp: float(v[2]) for tp, v in final.items()} == {tp: 0.0 for tp in final}
    committed = prometheus.per_partition('feature_consumer_committed_offset{job="feature-consumer"}')
    assert committed == {tp: float(v[0]) for tp, v in final.items()}
    wait_for(lambda: prometheus.per_partition("feature_consumer:lag_offsets:max") == {tp: 0.0 for tp in final},
             10 * SCRAPE_S, "the recording rule to follow")
