"""Consumer-group lag from Kafka's admin API (the `lag` command, and the reference for metrics tests).

Lag of a partition = log end offset - committed offset, as Kafka's `ConsumerGroupCommand --describe`
reports it; a partition without a committed offset has no lag figure (`None`), as there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from consumer.errors import TransientError


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.log_end - self.committed)


def group_lag(admin: AdminClient | Mapping[str, Any], group_id: str, topics: Iterable[str],
              timeout_s: float = 15.0) -> list[PartitionLag]:
    """Lag per partition of `topics` for the group. Callers that ask repeatedly pass one AdminClient."""
    if not isinstance(admin, AdminClient):
        admin = AdminClient(dict(admin))
    topics = sorted(set(topics))
    try:
        metadata = admin.list_topics(timeout=timeout_s)
        partitions = [
            TopicPartition(t, p) for t in topics if t in metadata.topics for p in sorted(metadata.topics[t].partitions)
        ]
        if not partitions:
            return []
        request = ConsumerGroupTopicPartitions(group_id, partitions)
        committed_result = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)[group_id]
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_result.result(timeout_s).topic_partitions}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = admin.list_offsets({tp: latest for tp in partitions}, request_timeout=timeout_s)
        ends = {(tp.topic, tp.partition): fut.result(timeout_s).offset for tp, fut in futures.items()}
    except Exception as exc:
        raise TransientError(f"Kafka admin API did not answer for group {group_id!r}: {exc}") from exc
    out = []
    for tp in partitions:
        key = (tp.topic, tp.partition)
        offset = committed.get(key, -1)
        out.append(PartitionLag(tp.topic, tp.partition, offset if offset >= 0 else None, int(ends[key])))
    return out


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
