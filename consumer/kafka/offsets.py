"""Where a consumer group stands: its committed offsets and the log ends, read from the brokers.

One reader serves everyone who asks: the `lag` command, the demo, tests and benchmarks, and the lag
collector behind the daemon's metrics. Lag of a partition = log end offset - committed offset, as Kafka's
`ConsumerGroupCommand --describe` reports it; a partition without a committed offset has no lag figure
(`None`), as there.

The figures come from the same broker requests the admin API sends (OffsetFetch to the group's
coordinator, ListOffsets to each partition's leader), made through a consumer handle that names the
group but never joins it. librdkafka's admin `ListConsumerGroupOffsets` dereferences a missing group
handle when the coordinator answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS (librdkafka issue
5040; it happens on a freshly started broker and for a group the broker has not seen), which kills the
process with a segmentation fault. A consumer handle owns a group handle, and retries those answers.

A partition whose answer carries an error is a failure, never an offset: a failed OffsetFetch answer
holds offset -1001 (nothing known), which read as "nothing committed" would make lag start from the
wrong place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.core.errors import TransientError
from consumer.kafka.source import TP
from consumer.kafka.watchdog import COORDINATOR_AWAY


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.log_end - self.committed)


class OffsetReader:
    """Reads one group's committed offsets and the log ends; callers that ask repeatedly keep one."""

    def __init__(self, client_config: Mapping[str, Any], group_id: str,
                 consumer_factory: Callable[[dict[str, Any]], Any] = Consumer) -> None:
        conf = dict(client_config)
        # Never subscribes, so never joins the group: it only reads what the group committed.
        conf.update({"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False})
        self.group_id = group_id
        self._consumer = consumer_factory(conf)

    # ------------------------------------------------------------------ single requests

    def partitions(self, topics: Iterable[str], timeout_s: float = 10.0) -> list[TP]:
        """The partitions of those of `topics` that exist, in order."""
        metadata = self._consumer.list_topics(timeout=timeout_s)
        return [(t, p) for t in sorted(set(topics)) if t in metadata.topics
                for p in sorted(metadata.topics[t].partitions)]

    def committed(self, partitions: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, int]:
        """The group's committed offsets (negative where there is none).

        Raises KafkaException when the answer for a partition failed, which is not "nothing committed".
        """
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
        """(low, high) watermark, asked of the partition's leader (not the cache, stale while paused).

        A handle that never subscribes keeps the leaders it learnt until librdkafka's periodic metadata
        refresh (minutes): once a leader dies, every ask goes to the dead broker and fails. So a failed
        ask refreshes the topic's metadata and asks once more.
        """
        tp = TopicPartition(*partition)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        except KafkaException:
            self._consumer.list_topics(partition[0], timeout=timeout_s)
            low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        return int(low), int(high)

    def log_ends(self, partitions: Iterable[TP], timeout_s: float = 5.0) -> dict[TP, int]:
        return {tp: self.watermarks(tp, timeout_s)[1] for tp in partitions}

    def start_offsets(self, partitions: Iterable[TP], reset: Literal["earliest", "latest"],
                      timeout_s: float = 10.0) -> dict[TP, int]:
        """The group's committed offsets; where there is none, where `auto.offset.reset` starts."""
        out = {}
        for tp, offset in self.committed(partitions, timeout_s).items():
            out[tp] = offset if offset >= 0 else self.watermarks(tp)[0 if reset == "earliest" else 1]
        return out

    # ------------------------------------------------------------------ the group's lag

    def read(self, topics: Iterable[str], timeout_s: float = 15.0) -> list[PartitionLag]:
        """Lag per partition of `topics` (partitions of topics that do not exist are left out), within
        about `timeout_s`; raises TransientError when Kafka does not answer in that time."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._read_once(topics, deadline)
            except KafkaException as exc:
                # A coordinator still loading, or moving (a group the broker has not seen, a broker just
                # started), answers with a retriable error: ask again while there is time.
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                retry = error is not None and (error.retriable() or error.code() in COORDINATOR_AWAY)
                if not retry or time.monotonic() >= deadline:
                    raise TransientError(f"Kafka did not answer for group {self.group_id!r}: {exc}") from exc
                time.sleep(0.2)
            except (RuntimeError, ValueError) as exc:  # a closed handle, an unknown topic name
                raise TransientError(f"Kafka did not answer for group {self.group_id!r}: {exc}") from exc

    def _read_once(self, topics: Iterable[str], deadline: float) -> list[PartitionLag]:
        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        partitions = self.partitions(topics, left())
        committed = self.committed(partitions, left())
        out = []
        for tp in partitions:
            offset = committed.get(tp, -1)
            out.append(PartitionLag(*tp, offset if offset >= 0 else None, self.watermarks(tp, left())[1]))
        return out

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> OffsetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_lag(client_config: Mapping[str, Any], group_id: str, topics: Iterable[str],
              timeout_s: float = 15.0) -> list[PartitionLag]:
    """Lag per partition of `topics` for the group, asked once."""
    with OffsetReader(client_config, group_id) as reader:
        return reader.read(topics, timeout_s)


def format_table(rows: list[PartitionLag]) -> str:
    header = ("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")
    body = [
        (r.topic, str(r.partition), "-" if r.committed is None else str(r.committed), str(r.log_end),
         "-" if r.lag is None else str(r.lag))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *body])
