"""The Kafka side: a consumer-group member with cooperative-sticky assignment and explicit commits."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.core.errors import TransientError

log = logging.getLogger(__name__)

TP = tuple[str, int]


class RebalanceListener(Protocol):
    def on_assign(self, partitions: list[TP]) -> None: ...
    def on_revoke(self, partitions: list[TP]) -> None: ...
    def on_lost(self, partitions: list[TP]) -> None: ...
    def on_commit_failed(self, partitions: list[TP], reason: str) -> None: ...


def _tps(partitions: Iterable[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


class KafkaSource:
    def __init__(self, config: Mapping[str, Any], topics: list[str], listener: RebalanceListener) -> None:
        conf = dict(config)
        conf.setdefault("on_commit", self._on_commit)
        # Bound what librdkafka prefetches: memory stays bounded whatever the backlog.
        conf.setdefault("queued.max.messages.kbytes", 32768)
        self._consumer = Consumer(conf)
        self._topics = topics
        self._listener = listener
        self.group_id = str(conf.get("group.id"))

    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics,
            on_assign=lambda _c, ps: self._listener.on_assign(_tps(ps)),
            on_revoke=lambda _c, ps: self._listener.on_revoke(_tps(ps)),
            on_lost=lambda _c, ps: self._listener.on_lost(_tps(ps)),
        )

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to `max_messages` messages (at least one call to the consumer, to serve callbacks)."""
        messages = self._consumer.consume(num_messages=max(1, max_messages), timeout=timeout_s)
        out = []
        for message in messages:
            error = message.error()
            if error is None:
                out.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.fatal():
                raise KafkaException(error)
            else:
                # Broker-side hiccups (a leader moving, a broker restarting): librdkafka retries them.
                log.warning("kafka consumer reports: %s", error)
        return out

    def assignment(self) -> set[TP]:
        return set(_tps(self._consumer.assignment()))

    def pause(self, partitions: Iterable[TP]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.pause(tps)

    def resume(self, partitions: Iterable[TP]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self._consumer.resume(tps)

    def commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None:
        """Commit the next offsets to read; raises TransientError when a synchronous commit fails."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if asynchronous:
                self._consumer.commit(offsets=tps, asynchronous=True)
                return
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            raise TransientError(f"commit of {len(tps)} partitions failed: {exc}") from exc
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise TransientError(f"commit failed for {_tps(failed)}: {failed[0].error}")

    def topic_partitions(self, topics: Iterable[str], timeout_s: float = 10.0) -> list[TP]:
        """The partitions of those of `topics` that exist, in order."""
        metadata = self._consumer.list_topics(timeout=timeout_s)
        return [(t, p) for t in sorted(set(topics)) if t in metadata.topics
                for p in sorted(metadata.topics[t].partitions)]

    def committed(self, partitions: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, int]:
        """The group's committed offsets (negative where there is none); raises KafkaException when the
        answer for a partition failed, which is not the same as nothing committed."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}
        out = {}
        for tp in self._consumer.committed(tps, timeout=timeout_s):
            if tp.error is not None:
                raise KafkaException(tp.error)
            out[(tp.topic, tp.partition)] = tp.offset
        return out

    def watermarks(self, partition: TP, timeout_s: float = 5.0) -> tuple[int, int]:
        """(low, high) watermark, asked of the partition's leader (not the cache, stale while paused)."""
        low, high = self._consumer.get_watermark_offsets(TopicPartition(*partition), timeout=timeout_s, cached=False)
        return int(low), int(high)

    def log_ends(self, partitions: Iterable[TP]) -> dict[TP, int]:
        return {tp: self.watermarks(tp)[1] for tp in partitions}

    def start_offsets(self, partitions: Iterable[TP], reset: str) -> dict[TP, int]:
        """The group's committed offsets; where there is none, where `auto.offset.reset` starts."""
        out = {}
        for tp, offset in self.committed(partitions).items():
            out[tp] = offset if offset >= 0 else self.watermarks(tp)[0 if reset == "earliest" else 1]
        return out

    def close(self) -> None:
        self._consumer.close()

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Served inside poll(), on the loop's thread. A failed asynchronous commit (a rebalance in progress
        # makes the generation stale, say) is not covered by a later one when the partition goes idle.
        if error is not None:
            self._listener.on_commit_failed(_tps(partitions), str(error))
            return
        failed = [tp for tp in partitions if tp.error is not None]
        if failed:
            self._listener.on_commit_failed(_tps(failed), str(failed[0].error))
