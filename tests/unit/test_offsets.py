"""The one offset reader: a partition's error answer is a failure, never an offset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.core.errors import TransientError
from consumer.kafka.offsets import OffsetReader

TOPIC = "t"


@dataclass
class _Answer:
    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class _Metadata:
    def __init__(self, partitions: int) -> None:
        self.topics = {TOPIC: type("Topic", (), {"partitions": {p: None for p in range(partitions)}})()}


class FakeConsumer:
    """Answers as librdkafka does: committed() gives one TopicPartition per partition, with `error` set
    where that partition's OffsetFetch failed (its offset then -1001, nothing known)."""

    def __init__(self, conf: dict[str, Any], committed: dict[int, int], failed: set[int] | None = None,
                 moving_for: int = 0) -> None:
        self.conf = conf
        self._committed = committed
        self._failed = failed or set()
        self.moving_for = moving_for  # answers with NOT_COORDINATOR this many times first
        self.watermark_requests: list[Any] = []
        self.joined: list[str] = []  # subscribe() or assign() called: the handle would take part in the group
        self.metadata_requests: list[str | None] = []
        self.leaders_known = True  # False: the leaders it knows are gone, until it asks for the topic again

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        self.joined.append("subscribe")

    def assign(self, *args: Any, **kwargs: Any) -> None:
        self.joined.append("assign")

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> _Metadata:
        self.metadata_requests.append(topic)
        if topic is not None:
            self.leaders_known = True
        return _Metadata(len(self._committed))

    def committed(self, tps: list[Any], timeout: float) -> list[_Answer]:
        if self.moving_for:
            self.moving_for -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
        return [_Answer(tp.topic, tp.partition, -1001, KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))
                if tp.partition in self._failed else _Answer(tp.topic, tp.partition, self._committed[tp.partition])
                for tp in tps]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.watermark_requests.append(tp)
        if not self.leaders_known:  # its cached leader is gone: librdkafka times out asking it
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return 0, 100

    def close(self) -> None:
        pass


def reader(consumer: FakeConsumer) -> OffsetReader:
    def factory(conf: dict[str, Any]) -> FakeConsumer:
        consumer.conf = conf
        return consumer

    return OffsetReader({"bootstrap.servers": "unused"}, "g", consumer_factory=factory)


def test_committed_offsets_and_nothing_committed_are_told_apart() -> None:
    r = reader(FakeConsumer({}, {0: 42, 1: -1001}))
    assert r.committed([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 42, (TOPIC, 1): -1001}
    # Nothing committed: the group starts where auto.offset.reset says.
    assert r.start_offsets([(TOPIC, 0), (TOPIC, 1)], "earliest") == {(TOPIC, 0): 42, (TOPIC, 1): 0}


def test_a_partitions_error_answer_is_not_taken_as_an_offset() -> None:
    consumer = FakeConsumer({}, {0: 42, 1: 7}, failed={1})
    r = reader(consumer)
    with pytest.raises(KafkaException):
        r.committed([(TOPIC, 0), (TOPIC, 1)])
    # The lag collector's way in: the failed answer must not become a watermark either.
    with pytest.raises(KafkaException):
        r.start_offsets([(TOPIC, 0), (TOPIC, 1)], "latest")
    assert consumer.watermark_requests == []


def test_the_lag_command_retries_while_the_coordinator_moves_and_gives_up_on_a_failed_partition() -> None:
    r = reader(FakeConsumer({}, {0: 40, 1: 100}, moving_for=2))
    assert [(row.partition, row.committed, row.lag) for row in r.read([TOPIC], timeout_s=5)] == [(0, 40, 60),
                                                                                                 (1, 100, 0)]
    with pytest.raises(TransientError, match="did not answer"):
        reader(FakeConsumer({}, {0: 40, 1: 100}, failed={0})).read([TOPIC], timeout_s=0.5)


def test_the_reader_never_joins_the_group() -> None:
    consumer = FakeConsumer({}, {0: 1})
    r = reader(consumer)
    r.read([TOPIC], timeout_s=5)
    assert consumer.conf["group.id"] == "g" and consumer.conf["enable.auto.commit"] is False
    assert consumer.joined == []


def test_a_log_end_asked_of_a_dead_leader_is_asked_again_after_the_topics_metadata_is_refreshed() -> None:
    """Measured on the three-broker cluster: after the leader's kill -9 a long-lived handle timed out on
    every ask for 70 s; a refresh of the topic's metadata made the next ask succeed."""
    consumer = FakeConsumer({}, {0: 40, 1: 100})
    r = reader(consumer)
    consumer.leaders_known = False
    assert r.log_ends([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 100, (TOPIC, 1): 100}
    assert consumer.metadata_requests == [TOPIC]  # once: the refresh holds for the next partition


def test_a_log_end_that_fails_after_the_refresh_is_a_failure() -> None:
    consumer = FakeConsumer({}, {0: 40})
    r = reader(consumer)

    def unreachable(tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    consumer.get_watermark_offsets = unreachable  # type: ignore[method-assign]
    with pytest.raises(KafkaException):
        r.log_ends([(TOPIC, 0)])
    assert consumer.metadata_requests == [TOPIC]
