"""Graceful scale-in, as Kubernetes does it: SIGTERM to one consumer of the group while records stream in.

The stopped consumer drains (finishes its writes, commits, leaves the group) and exits 0; the group
rebalances so that the remaining consumer owns every partition; the oracle finds nothing lost or
regressed and the dead letters complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

from tests.daemon import Daemon, Deployment, SlowProducer, wait_members
from tests.workload import generate

pytestmark = [pytest.mark.fault, pytest.mark.integration]

def test_sigterm_to_one_of_two_consumers_under_load(
    make_deployment: Callable[..., Deployment], reader, daemons: list[Daemon], record_figures
) -> None:
    deployment = make_deployment("scalein", partitions=4, batch={"max_records": 200, "max_wait_ms": 100})
    admin = AdminClient({"bootstrap.servers": deployment.endpoints.bootstrap_servers})
    events = generate(entities=400, events_per_entity=6, seed=61)
    producer = SlowProducer(deployment, [events[i:i + 300] for i in range(0, len(events), 300)], pause_s=0.7)
    daemons.append(Daemon(deployment, "stays"))
    daemons.append(Daemon(deployment, "leaves"))
    two = wait_members(admin, deployment.group, 2, deployment.partitions)
    assert set().union(*two.values()) == set(range(deployment.partitions))

    producer.start()
    time.sleep(2.5)  # mid-stream: both consumers have records in flight
    assert not producer.done.is_set()
    assert daemons[1].terminate() == 0  # drained, committed and left within its drain timeout
    one = wait_members(admin, deployment.group, 1, deployment.partitions)
    assert next(iter(one.values())) == set(range(deployment.partitions))  # rebalanced onto the survivor

    producer.join()
    deployment.wait_caught_up(timeout_s=120, daemons=daemons[:1])
    record_figures("graceful scale-in 2 -> 1 (SIGTERM)", deployment, reader, events, producer.where, 1)
    # It wrote everything it held before leaving: nothing was left for the survivor to read again.
    assert "not written" not in daemons[1].log()
    assert daemons[1].log().rstrip().endswith("stopped")
