"""Cassandra hangs for 80 s under a running daemon: SIGSTOP, its sockets open and nothing answering, as a
node in a long GC pause or on a stuck disk does; then SIGCONT.

With `metrics.stuck_after_s` at its default (60 s), `/healthz` must answer 200 all along (the kubelet's
liveness probe must not restart the pod for a database hang): the loop never waits for Cassandra, and a
write's retries are the writer's business, not the loop's. The loop must still hear of the failure, and
pause its partitions and count a transient failure. The lag in offsets must stay fresh meanwhile: the log
end offsets are asked of the brokers every `metrics.lag_interval_s` (5 s), by a thread that never waits
for Cassandra (docs/metrics.md). After SIGCONT the fault suite's verdict holds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from consumer.config.sections import MetricsSettings
from stack import localstack
from tests.daemon import Daemon, Deployment, SlowProducer
from tests.helpers import free_port, wait_for
from tests.scrape import Sampler, by_partition, describe_pauses, get, total
from tests.workload import generate

pytestmark = [pytest.mark.fault, pytest.mark.integration]

HANG_S = 80
LAG_INTERVAL_S = float(MetricsSettings.model_fields["lag_interval_s"].default)  # the daemon runs with it
# A log end offset exported at time t must be at least what the brokers had at t - FRESH_WITHIN_S: one
# collection interval, plus the collection's own time and one sample's.
FRESH_WITHIN_S = LAG_INTERVAL_S + 3.0


def test_cassandra_hangs_80s_healthz_stays_200_partitions_pause_lag_stays_fresh(
    make_deployment: Callable[..., Deployment], reader: Any, daemons: list[Daemon], running: list[Any],
    record_figures: Callable[..., Any],
) -> None:
    deployment = make_deployment("hang", batch={"max_records": 200, "max_wait_ms": 100})
    port = free_port()
    deployment.write_config(metrics_port=port)  # metrics.stuck_after_s 60 and lag_interval_s 5: the defaults
    daemons.append(Daemon(deployment))
    wait_for(lambda: get(port, "/healthz")[0] == 200, what="the daemon's /healthz")
    events = generate(entities=300, events_per_entity=6, seed=41)
    # Produced over ~90 s: before, all through and after the hang.
    producer = SlowProducer(deployment, [events[i:i + 40] for i in range(0, len(events), 40)], pause_s=2.0)
    sampler = Sampler(port, interval_s=1.0).start()  # /healthz asked every second, /metrics scraped with it
    producer.start()
    truth: list[tuple[float, dict[tuple[str, int], int]]] = []  # (when, the brokers' log ends)
    try:
        wait_for(lambda: sum(r.committed or 0 for r in deployment.lag()) > 0, what="a first commit")
        pid = localstack._read_pid("cassandra")
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        running.append(lambda: os.kill(pid, signal.SIGCONT))
        hung_at = time.monotonic()
        try:
            while time.monotonic() - hung_at < HANG_S:
                ends = {(r.topic, r.partition): r.log_end for r in deployment.lag()}
                truth.append((time.monotonic(), ends))
                daemons[0].assert_alive()
                time.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        producer.join()
        deployment.wait_caught_up(timeout_s=240, daemons=daemons)
    finally:
        sampler.stop()

    during = sampler.between(hung_at, resumed_at)
    polls = len(during)
    bad = [(round(s.at - hung_at, 1), s.health) for s in sampler.health_failures()]
    pauses = [p for p in sampler.pauses() if hung_at <= p.start <= resumed_at]
    failures = total(sampler.last(), "feature_consumer_transient_failures_total")
    # Freshness: every exported log end during the hang against what the brokers had FRESH_WITHIN_S before.
    stale: list[tuple[float, dict[tuple[str, int], float], dict[tuple[str, int], int]]] = []
    for sample in during:
        exported = by_partition(sample.metrics, "feature_consumer_log_end_offset")
        before = [ends for at, ends in truth if at <= sample.at - FRESH_WITHIN_S]
        if before and any(exported.get(tp, -1) < end for tp, end in before[-1].items()):
            stale.append((round(sample.at - hung_at, 1), exported, before[-1]))
    # How long each change of the brokers' log ends took to show in the daemon's metrics.
    delays = []
    for at, ends in truth:
        shown = next((s.at for s in during if s.at >= at and all(
            by_partition(s.metrics, "feature_consumer_log_end_offset").get(tp, -1) >= end for tp, end in ends.items())),
            None)
        if shown is not None:
            delays.append(shown - at)
    produced_during = sum(truth[-1][1].values()) - sum(truth[0][1].values())
    print(f"hang {resumed_at - hung_at:.0f}s: /healthz asked {polls} times, not 200: {bad}; pauses "
          f"{describe_pauses(pauses)}, first {pauses[0].start - hung_at if pauses else float('nan'):.1f}s into the "
          f"hang; transient failures {failures:.0f}; {produced_during} records produced meanwhile; log end shown "
          f"after at most {max(delays, default=float('nan')):.1f}s (median "
          f"{sorted(delays)[len(delays) // 2] if delays else float('nan'):.1f}s)")

    assert polls >= HANG_S - 5, f"/healthz was asked only {polls} times during the hang"
    assert not bad, f"/healthz did not answer 200 (seconds into the hang, status): {bad}"
    assert pauses, "the partitions were never paused while Cassandra hung"
    assert failures >= 1, "no transient failure was counted"
    assert produced_during > 0
    assert not stale, f"log end offsets went stale during the hang: {stale[:3]}"
    record_figures(f"Cassandra hangs {HANG_S} s (SIGSTOP)", deployment, reader, events, producer.where, 1)
