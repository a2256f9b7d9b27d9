"""Faults during a stream, each ending with the oracle: nothing lost, nothing regressed, dead letters complete.

The workload (tests/workload.py) holds out-of-order and late events, duplicates, ties and poison records.
Services are stopped and started again for real (their data kept), consumers are killed with SIGKILL,
scaled up and down, and the registry and the dead-letter topic disappear for a while.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stack import localstack
from tests.daemon import (
    Daemon,
    Deployment,
    SlowProducer,
    committed_total,
    framed_encoder,
    wait_for_progress,
    wait_members,
)
from tests.helpers import DRIVER_SCHEMA, wait_for
from tests.proxy import TcpProxy
from tests.topics import wait_known_everywhere
from tests.workload import Event, generate

pytestmark = [pytest.mark.fault, pytest.mark.integration]

BATCH = {"max_records": 200, "max_wait_ms": 100}


@pytest.fixture
def deployment(make_deployment: Callable[..., Deployment]) -> Deployment:
    return make_deployment("fault", batch=BATCH)


def reindex(events: list[Event], start: int) -> list[Event]:
    """The same events, numbered start, start + 1, ... in list order (production order)."""
    return [Event(start + n, *list(e.__dict__.values())[1:]) for n, e in enumerate(events)]


def test_kill_9_mid_batch_several_times(deployment, reader, daemons, record_figures) -> None:
    # A backlog large enough that every kill lands while work is left (checked below, not assumed).
    events = generate(entities=1500, events_per_entity=8, seed=31)
    where = deployment.produce(events)
    rng = random.Random(3)
    lag_at_kill: list[int] = []
    for n in range(4):
        daemon = Daemon(deployment, f"k{n}")
        daemons.append(daemon)
        wait_for_progress(deployment, since=committed_total(deployment))  # this one has written a batch
        time.sleep(rng.uniform(0.1, 0.6))  # somewhere inside a later batch's writes
        daemon.proc.send_signal(signal.SIGSTOP)  # frozen: the lag read next is the one the kill hits
        lag_at_kill.append(sum(r.log_end - (r.committed or 0) for r in deployment.lag()))
        daemon.kill()
    assert all(lag > 0 for lag in lag_at_kill), f"a kill found no work left: lag at each kill {lag_at_kill}"
    daemons.append(Daemon(deployment, "final"))
    deployment.wait_caught_up(timeout_s=180, daemons=daemons[-1:])
    print(f"lag at each kill: {lag_at_kill}")
    record_figures("kill -9 x4, restarts", deployment, reader, events, where, len(lag_at_kill))


def test_cassandra_stopped_mid_stream(deployment, reader, daemons, running, record_figures) -> None:
    first = generate(entities=300, events_per_entity=4, seed=32)
    where = deployment.produce(first)
    daemon = Daemon(deployment)
    daemons.append(daemon)
    wait_for_progress(deployment)
    localstack.stop_service("cassandra")
    stopped_at = time.monotonic()  # down from here (stopping takes a while, and is not the outage)
    running.append(lambda: localstack._read_pid("cassandra") or localstack.start_service("cassandra"))
    try:
        committed_at_stop = {(r.topic, r.partition): r.committed for r in deployment.lag()}
        second = reindex(generate(entities=300, events_per_entity=3, seed=33), len(first))
        where.update(deployment.produce(second))
        time.sleep(12)  # the store is down: the consumer backs off and pauses
        daemon.assert_alive()
        committed_now = {(r.topic, r.partition): r.committed for r in deployment.lag()}
        # Nothing new is committed while nothing can be written (one batch in flight may finish).
        advanced = sum((committed_now[tp] or 0) - (committed_at_stop[tp] or 0) for tp in committed_now)
        assert advanced <= BATCH["max_records"], (committed_at_stop, committed_now)
    finally:
        down_s = time.monotonic() - stopped_at  # until it is started again (a JVM start is not the outage)
        localstack.start_service("cassandra")  # returns once it answers CQL again
    assert 10 <= down_s <= 60, down_s
    deployment.wait_caught_up(timeout_s=240, daemons=daemons)
    assert "retrying in" in daemon.log()
    record_figures(f"Cassandra down {down_s:.0f} s", deployment, reader, first + second, where, 1)


def test_kafka_broker_restarted_mid_stream(deployment, reader, daemons, running, record_figures) -> None:
    first = generate(entities=300, events_per_entity=4, seed=34)
    where = deployment.produce(first)
    # With librdkafka's group and metadata debug log. About once in 15 runs its client stayed outside the
    # group after the restart ("no broker available for coordinator query" while the broker was back); the
    # daemon's watchdog now replaces such a client (kafka.rejoin_after_s), and the log shows what happened.
    debug = json.dumps({"debug": "cgrp,metadata"})
    daemons.append(Daemon(deployment, env={"FEATURE_CONSUMER_KAFKA__SETTINGS": debug}))
    wait_for_progress(deployment)
    localstack.stop_service("kafka")
    running.append(lambda: localstack._read_pid("kafka") or localstack.start_service("kafka"))
    time.sleep(5)
    localstack.start_service("kafka")
    deployment.close()  # a lag reader from before the restart may hold dead connections
    second = reindex(generate(entities=300, events_per_entity=3, seed=35), len(first))
    where.update(deployment.produce(second))
    deployment.wait_caught_up(timeout_s=240, daemons=daemons)
    record_figures("Kafka broker restarted", deployment, reader, first + second, where, 1)


def test_consumers_scaled_1_3_1_during_the_stream(deployment, reader, daemons, record_figures) -> None:
    generated = generate(entities=500, events_per_entity=6, seed=36)
    # Produced in six slices; the events are numbered in production order (the oracle's last tie-break).
    slices = [generated[i::6] for i in range(6)]
    events = reindex([e for part in slices for e in part], 0)
    bounds = [0]
    for part in slices:
        bounds.append(bounds[-1] + len(part))
    producer = SlowProducer(deployment, [events[a:b] for a, b in itertools.pairwise(bounds)], pause_s=1.5)
    producer.start()
    admin = AdminClient({"bootstrap.servers": deployment.endpoints.bootstrap_servers})
    daemons.append(Daemon(deployment, "a"))
    wait_for_progress(deployment)
    daemons.append(Daemon(deployment, "b"))
    daemons.append(Daemon(deployment, "c"))
    # All three hold partitions mid-stream.
    wait_members(admin, deployment.group, 3, deployment.partitions, timeout_s=90)
    assert not producer.done.is_set()
    assert daemons[1].terminate() == 0
    assert daemons[2].terminate() == 0
    producer.join()
    deployment.wait_caught_up(timeout_s=180, daemons=daemons[:1])
    record_figures("consumers 1 -> 3 -> 1", deployment, reader, events, producer.where, 4)


def test_schema_registry_unreachable_at_start_up_and_mid_stream(
    make_deployment, registry_url, reader, daemons, running, record_figures
) -> None:
    host_port = registry_url.split("//")[1].split("/")[0]
    proxy = TcpProxy(host_port.split(":")[0], int(host_port.split(":")[1]))
    proxy.open()
    proxy.close()  # the registry is unreachable when the consumer starts
    running.append(proxy.close)
    deployment = make_deployment("fault_reg", batch=BATCH,
                                 registry_url=registry_url.replace(host_port, proxy.url_host))
    schema_v1 = DRIVER_SCHEMA  # with its timestamp logical types: integers pass through fastavro's writer
    first = generate(entities=200, events_per_entity=3, seed=37)
    where = deployment.produce(first, framed_encoder(registry_url, deployment.topic, schema_v1))
    daemons.append(Daemon(deployment))
    time.sleep(8)
    daemons[0].assert_alive()
    assert deployment.total_lag() != 0  # records wait for the registry
    proxy.open()
    deployment.wait_caught_up(timeout_s=120, daemons=daemons)

    # Mid-stream: a new writer schema (a field added with a default) while the registry is unreachable.
    schema_v2 = dict(schema_v1, fields=[*schema_v1["fields"], {"name": "region", "type": "string", "default": "eu"}])
    proxy.close()
    second = reindex(generate(entities=200, events_per_entity=3, seed=38), len(first))
    encode_v2 = framed_encoder(registry_url, deployment.topic, schema_v2)
    where.update(deployment.produce(second, encode_v2))
    time.sleep(8)
    daemons[0].assert_alive()
    assert deployment.total_lag() != 0
    proxy.open()
    deployment.wait_caught_up(timeout_s=120, daemons=daemons)
    # Nothing was dead-lettered for the registry's absence: only the poison records are there.
    record_figures("schema registry unreachable (start, mid-stream)", deployment, reader, first + second, where, 2)


def test_dead_letter_topic_unwritable(deployment, reader, daemons, record_figures) -> None:
    admin = AdminClient({"bootstrap.servers": deployment.endpoints.bootstrap_servers})
    admin.delete_topics([deployment.dead_letter_topic])[deployment.dead_letter_topic].result(30)
    events = generate(entities=150, events_per_entity=4, seed=39, poison_rate=0.03)
    where = deployment.produce(events)
    first_poison: dict[int, int] = {}
    for e in events:
        if e.poison:
            partition, offset = where[e.index]
            first_poison[partition] = min(first_poison.get(partition, offset), offset)
    daemons.append(Daemon(deployment))
    # Dead letters cannot be acknowledged (the producer gives up after 15 s), and are retried.
    wait_for(lambda: "cannot be written" in daemons[0].log(), timeout_s=90,
             what="the daemon to reach a poison record and fail to dead-letter it")
    time.sleep(3)  # and go on holding the commits past it for a while
    daemons[0].assert_alive()
    assert "cannot be written" in daemons[0].log()  # it did reach a poison record
    for row in deployment.lag():
        if row.partition in first_poison:
            assert (row.committed or 0) <= first_poison[row.partition], (row, first_poison)
    deadline = time.monotonic() + 30
    while True:  # topic deletion completes asynchronously; creating it again may need a retry
        try:
            admin.create_topics([NewTopic(deployment.dead_letter_topic, 1, 1)])[deployment.dead_letter_topic].result(30)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    wait_known_everywhere(admin, [deployment.dead_letter_topic])
    deployment.wait_caught_up(timeout_s=180, daemons=daemons)
    record_figures("dead-letter topic unwritable ~25 s", deployment, reader, events, where, 1)
