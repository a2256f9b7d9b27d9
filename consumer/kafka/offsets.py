"""Consumer-group lag, read from the brokers (the `lag` command, the demo, tests and benchmarks).

Lag of a partition = log end offset - committed offset, as Kafka's `ConsumerGroupCommand --describe`
reports it; a partition without a committed offset has no lag figure (`None`), as there.

The figures come from the same broker requests the admin API sends (OffsetFetch to the group's
coordinator, ListOffsets to each partition's leader), made through a consumer handle that names the
group but never joins it. librdkafka's admin `ListConsumerGroupOffsets` dereferences a missing group
handle when the coordinator answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS (librdkafka issue
5040; it happens on a freshly started broker and for a group the broker has not seen), which kills the
process with a segmentation fault. A consumer handle owns a group handle, and retries those answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer.core.errors import TransientError
from consumer.kafka.source import TP, KafkaSource

_COORDINATOR_MOVING = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE})


class _NoRebalances:
    """The reader never subscribes: no rebalance and no commit ever reaches it."""

    def on_assign(self, partitions: list[TP]) -> None: ...
    def on_revoke(self, partitions: list[TP]) -> None: ...
    def on_lost(self, partitions: list[TP]) -> None: ...
    def on_commit_failed(self, partitions: list[TP], reason: str) -> None: ...


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.log_end - self.committed)


class GroupLagReader:
    """Reads one group's committed offsets and the log ends; callers that ask repeatedly keep one."""

    def __init__(self, client_config: Mapping[str, Any], group_id: str) -> None:
        conf = dict(client_config)
        # Never subscribes, so never joins the group: it only reads what the group committed.
        conf.update({"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False})
        self.group_id = group_id
        self._source = KafkaSource(conf, [], _NoRebalances())

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
                retry = error is not None and (error.retriable() or error.code() in _COORDINATOR_MOVING)
                if not retry or time.monotonic() >= deadline:
                    raise TransientError(f"Kafka did not answer for group {self.group_id!r}: {exc}") from exc
                time.sleep(0.2)
            except (RuntimeError, ValueError) as exc:  # a closed handle, an unknown topic name
                raise TransientError(f"Kafka did not answer for group {self.group_id!r}: {exc}") from exc

    def _read_once(self, topics: Iterable[str], deadline: float) -> list[PartitionLag]:
        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        partitions = self._source.topic_partitions(topics, left())
        committed = self._source.committed(partitions, left())
        out = []
        for tp in partitions:
            offset = committed.get(tp, -1)
            out.append(PartitionLag(*tp, offset if offset >= 0 else None, self._source.watermarks(tp, left())[1]))
        return out

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> GroupLagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_lag(client_config: Mapping[str, Any], group_id: str, topics: Iterable[str],
              timeout_s: float = 15.0) -> list[PartitionLag]:
    """Lag per partition of `topics` for the group, asked once."""
    with GroupLagReader(client_config, group_id) as reader:
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
