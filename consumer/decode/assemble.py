"""Micro-batch assembly: consumed messages -> per view, a coalesced push frame and encoded rows.

`assemble` is a pure function of (messages, decoders, limits, now): it decodes every message
(decoder.py), maps the records to view columns (mapping.py), rejects what cannot be mapped (with the
reason, for the dead-letter topic), keeps only the newest record per (view, entity) (coalesce.py), and
encodes the survivors for the online store. Every message of the batch is accounted for in
`next_offsets`, whatever became of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.core.errors import FramingError, MappingError, RecordError, Source
from consumer.core.policy import Limits
from consumer.core.records import Message, Rejected, source_of
from consumer.decode.coalesce import ViewBatch, coalesce
from consumer.decode.decoder import TopicDecoder
from consumer.decode.mapping import Part, Plan, map_columns


@dataclass
class Batch:
    messages: Sequence[Message]
    views: list[ViewBatch]
    rejected: list[Rejected]
    next_offsets: dict[tuple[str, int], int]  # per (topic, partition): the offset to commit

    @property
    def size(self) -> int:
        return len(self.messages)

    @property
    def written_rows(self) -> int:
        return sum(len(v.rows) for v in self.views)

    def source(self, position: int) -> Source:
        return source_of(self.messages[position])


@dataclass
class _Group:
    """The records of one batch that one plan reads (one writer schema, one view)."""

    plan: Plan
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def columns(self) -> dict[str, list[Any]]:
        return {p.column: [r[p.field] for r in self.records] for p in self.plan.columns}


def assemble(
    messages: Sequence[Message],
    decoders: Mapping[str, TopicDecoder],
    limits: Limits,
    now_ms: int,
) -> Batch:
    """Decode, map, coalesce and encode one micro-batch.

    Raises RegistryUnavailable (transient) when a writer schema cannot be fetched: the batch is then
    retried as a whole, and no record is dead-lettered for it.
    """
    rejected: list[Rejected] = []
    next_offsets: dict[tuple[str, int], int] = {}
    groups: dict[int, _Group] = {}
    last_topic: str | None = None
    decoder: TopicDecoder | None = None
    last_plans: list[Plan] | None = None
    sinks: list[_Group] = []
    for position, message in enumerate(messages):
        topic = message.topic() or ""
        tp = (topic, message.partition() or 0)
        offset = message.offset() or 0
        if next_offsets.get(tp, -1) <= offset:
            next_offsets[tp] = offset + 1
        if topic != last_topic:
            last_topic = topic
            decoder = decoders.get(topic)
        if decoder is None:
            err = FramingError(f"no feature view reads topic {topic!r}").at(source_of(message))
            rejected.append(Rejected(message, err))
            continue
        try:
            plans, record = decoder.decode(message.value())
        except RecordError as exc:
            rejected.append(Rejected(message, exc.at(source_of(message))))
            continue
        if plans is not last_plans:
            last_plans = plans
            sinks = [groups.setdefault(id(plan), _Group(plan)) for plan in plans]
        for group in sinks:
            group.records.append(record)
            group.positions.append(position)

    by_view: dict[tuple[str, str], list[_Group]] = {}
    for group in groups.values():
        by_view.setdefault((group.plan.view.project, group.plan.view.name), []).append(group)
    views: list[ViewBatch] = []
    for view_groups in by_view.values():
        parts: list[Part] = []
        for group in view_groups:
            part, bad = map_columns(group.plan, group.columns(), group.positions, limits, now_ms)
            for position, reason in bad:
                message = messages[position]
                rejected.append(Rejected(message, MappingError(reason).at(source_of(message))))
            if part is not None:
                parts.append(part)
        if parts:
            views.append(coalesce(view_groups[0].plan.view, parts))
    return Batch(messages, views, rejected, next_offsets)
