"""Replacing the group member's Kafka client (what the watchdog does to a stuck one), against real Kafka."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from consumer.config.sections import KafkaSettings
from consumer.kafka.source import TP, KafkaSource
from consumer.kafka.watchdog import cluster_answers

pytestmark = pytest.mark.integration


class Listener:
    def __init__(self) -> None:
        self.assigned: list[list[TP]] = []
        self.revoked: list[list[TP]] = []
        self.lost: list[list[TP]] = []
        self.commit_failures: list[list[TP]] = []

    def on_assign(self, partitions: list[TP]) -> None:
        self.assigned.append(partitions)

    def on_revoke(self, partitions: list[TP]) -> None:
        self.revoked.append(partitions)

    def on_lost(self, partitions: list[TP]) -> None:
        self.lost.append(partitions)

    def on_commit_failed(self, partitions: list[TP], reason: str) -> None:
        self.commit_failures.append(partitions)


def read_until(source: KafkaSource, done: Callable[[list[tuple[TP, int]]], bool],
               timeout_s: float = 60) -> list[tuple[TP, int]]:
    got: list[tuple[TP, int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(got):
        got += [((m.topic(), m.partition()), m.offset()) for m in source.poll(100, 0.2)]
    assert done(got), got
    return got


def test_a_replaced_client_gives_up_its_partitions_uncommitted_and_the_new_one_reads_on_from_the_commit(
        stack, make_topic) -> None:
    topic = make_topic(partitions=2)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for i in range(40):
        producer.produce(topic, value=b"%d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    settings = KafkaSettings(bootstrap_servers=stack.bootstrap_servers, group_id=f"{topic}-group",
                             session_timeout_ms=6000)
    listener = Listener()
    source = KafkaSource(settings.consumer_config(), [topic], listener, probe_config=settings.admin_config())
    source.subscribe()
    try:
        both = {(topic, 0), (topic, 1)}
        joined = time.monotonic()
        first = read_until(source, lambda got: {tp for tp, _ in got} == both and len(got) == 40)
        assert source.assignment() == both
        # librdkafka's own statistics of a member in its group read "up" (what the watchdog relies on: were
        # they to read anything else, every client would be taken for stuck).
        read_until(source, lambda _: source.group_last_up > joined, timeout_s=20)
        source.commit({(topic, 0): 10, (topic, 1): 15}, asynchronous=False)

        source.replace()
        assert [sorted(p) for p in listener.lost] == [sorted(both)]
        # The new client joins as a new member and is given both partitions (the old one has left, or its
        # session ran out), then reads them again from the committed offsets: 10 + 5 records.
        again = read_until(source, lambda got: len(got) >= 15)
        assert sorted(o for tp, o in again if tp == (topic, 0)) == list(range(10, 20))
        assert sorted(o for tp, o in again if tp == (topic, 1)) == list(range(15, 20))
        assert source.assignment() == both
        # The old client has closed, and its callbacks (its revocation as it left) never reached the listener.
        assert source.closing is not None
        source.closing.join(30)
        assert not source.closing.is_alive()
        assert listener.revoked == [] and len(listener.lost) == 1
        assert sorted(tp for batch in listener.assigned for tp in batch) == sorted([*both, *both])
        assert len(first) == 40 and listener.commit_failures == []
    finally:
        source.close()


def test_the_watchdogs_question_is_answered_by_the_stack_and_not_by_a_closed_port(stack) -> None:
    settings = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    # A group that does not exist: its coordinator still answers.
    assert cluster_answers(settings.admin_config(), f"nobody-{time.time_ns()}", 5.0)
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    started = time.monotonic()
    assert not cluster_answers(nowhere.admin_config(), "g", 2.0)
    assert time.monotonic() - started < 10
