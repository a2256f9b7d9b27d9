"""Micro-batch assembly: consumed messages -> per view, a coalesced push frame and encoded rows.

`assemble` is a pure function of (messages, decoders, limits, now): it decodes every message, maps
the records to view columns, rejects what cannot be mapped (with the reason, for the dead-letter
topic), keeps only the newest record per (view, entity), and encodes the survivors for the online
store. Every message of the batch is accounted for in `next_offsets`, whatever became of it.

Newest means: greater event timestamp (at the store's millisecond resolution); on a tie, greater
created timestamp (a missing one is the oldest); on a further tie, the later message in the batch.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
from fastavro import schemaless_reader

from consumer.core.dtypes import Kind
from consumer.core.errors import FramingError, MappingError, RecordError, Source
from consumer.core.guard import NULL_MS
from consumer.core.policy import Limits
from consumer.core.store import EncodedRows
from consumer.core.views import FeatureView
from consumer.decode.schema import HEADER_SIZE, ColumnPlan, Plan, TopicDecoder
from consumer.feast import frame as rowmod

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Message(Protocol):
    """The part of confluent_kafka.Message that assembly reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...


@dataclass
class Rejected:
    message: Message
    error: RecordError


@dataclass
class ViewBatch:
    view: FeatureView
    frame: pd.DataFrame  # the coalesced push frame
    rows: EncodedRows  # aligned with frame
    positions: npt.NDArray[np.int64]  # per row: the position in the batch of the record it came from
    records: int  # rows before coalescing
    superseded: int  # rows dropped because a newer record for the same entity was in the batch


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
    plan: Plan
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def source_of(message: Message) -> Source:
    return Source(message.topic() or "", message.partition() or 0, message.offset() or 0)


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

    def sinks_for(plans: list[Plan]) -> list[_Group]:
        out = []
        for plan in plans:
            group = groups.get(id(plan))
            if group is None:
                group = groups[id(plan)] = _Group(plan)
            out.append(group)
        return out

    reader = schemaless_reader
    new_buffer = io.BytesIO
    last_topic: str | None = None
    decoder: TopicDecoder | None = None
    fast: dict[bytes, tuple[Any, list[Plan]]] = {}
    start = 0
    last_entry: tuple[Any, list[Plan]] | None = None
    sinks: list[_Group] = []
    # The hot loop: a decoder's cache gives the parsed writer schema and plans for a known header; every
    # other case (new schema id, bad framing, corrupt body) takes `decoder.decode`, which raises the
    # typed error or fills the cache.
    for position, message in enumerate(messages):
        topic = message.topic() or ""
        tp = (topic, message.partition() or 0)
        offset = message.offset() or 0
        if next_offsets.get(tp, -1) <= offset:
            next_offsets[tp] = offset + 1
        if topic != last_topic:
            last_topic = topic
            decoder = decoders.get(topic)
            if decoder is not None:
                fast = decoder.fast
                start = HEADER_SIZE if decoder.framed else 0
        if decoder is None:
            err = FramingError(f"no feature view reads topic {topic!r}").at(source_of(message))
            rejected.append(Rejected(message, err))
            continue
        value = message.value()
        record: Any = None
        entry = fast.get(value[:start]) if value is not None else None
        if entry is not None and value is not None:
            buf = new_buffer(value)
            buf.seek(start)
            try:
                record = reader(buf, entry[0], None)
            except Exception:  # noqa: BLE001 - re-decoded below to raise the typed error
                record = None
            if record is None or buf.tell() != len(value):
                record = None
            elif entry is not last_entry:
                last_entry = entry
                sinks = sinks_for(entry[1])
        if record is None:
            try:
                plans, record = decoder.decode(value)
            except RecordError as exc:
                rejected.append(Rejected(message, exc.at(source_of(message))))
                continue
            last_entry = None
            sinks = sinks_for(plans)
        for group in sinks:
            group.records.append(record)
            group.positions.append(position)

    by_view: dict[tuple[str, str], list[_Group]] = {}
    for group in groups.values():
        by_view.setdefault((group.plan.view.project, group.plan.view.name), []).append(group)
    views: list[ViewBatch] = []
    for view_groups in by_view.values():
        parts = []
        for group in view_groups:
            part, bad = _map_group(group, limits, now_ms)
            for position, reason in bad:
                message = messages[position]
                rejected.append(Rejected(message, MappingError(reason).at(source_of(message))))
            if part is not None:
                parts.append(part)
        if parts:
            views.append(_coalesce(view_groups[0].plan.view, parts))
    return Batch(messages, views, rejected, next_offsets)


def map_records(
    plan: Plan, records: list[dict[str, Any]], limits: Limits, now_ms: int
) -> tuple[ViewBatch | None, list[tuple[int, str]]]:
    """Map, check, coalesce and encode records that are already decoded (the backfill's way in).

    Returns the view batch (None when every record was refused) and (record index, reason) per refusal;
    `ViewBatch.positions` are record indices.
    """
    part, bad = _map_group(_Group(plan, records, list(range(len(records)))), limits, now_ms)
    return (None if part is None else _coalesce(plan.view, [part])), bad


# --------------------------------------------------------------------------- mapping


@dataclass
class _Part:
    columns: dict[str, pd.Series]
    event_ms: npt.NDArray[np.int64]
    created_ms: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]


class _Problems:
    """Reasons per record position; the first reason found for a record is kept."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=np.bool_)
        self.reasons: dict[int, str] = {}

    def add(self, index: int, reason: str) -> None:
        if not self.bad[index]:
            self.bad[index] = True
            self.reasons[index] = reason

    def add_mask(self, mask: npt.NDArray[np.bool_], reason: Any) -> None:
        for index in np.flatnonzero(mask & ~self.bad).tolist():
            self.add(index, reason(index) if callable(reason) else reason)


def _ints(p: ColumnPlan, raw: list[Any], problems: _Problems, what: str) -> npt.NDArray[np.int64]:
    filled = [0 if v is None else v for v in raw] if p.nullable else raw
    try:
        return np.array(filled, dtype=np.int64)
    except OverflowError:
        out = np.zeros(len(raw), dtype=np.int64)
        for i, v in enumerate(filled):
            if INT64_MIN <= v <= INT64_MAX:
                out[i] = v
            else:
                problems.add(i, f"{what} {p.column!r}: {v} does not fit in 64 bits")
        return out


def _to_micros(p: ColumnPlan, values: npt.NDArray[np.int64], problems: _Problems, what: str
               ) -> npt.NDArray[np.int64]:
    if p.to_micros > 1:
        limit = INT64_MAX // p.to_micros
        problems.add_mask(np.abs(values) > limit, f"{what} {p.column!r} is out of range")
        return np.where(np.abs(values) > limit, 0, values) * p.to_micros
    if p.to_micros < 0:
        return np.floor_divide(values, -p.to_micros)
    return values


def _size_check(p: ColumnPlan, values: list[Any], limits: Limits, problems: _Problems, what: str) -> None:
    cap = limits.max_value_bytes
    for i, v in enumerate(values):
        if v is None:
            continue
        size = len(v) if isinstance(v, bytes) else (len(v) if len(v) * 4 <= cap else len(v.encode("utf-8")))
        if size > cap:
            problems.add(i, f"{what} {p.column!r} is {size} bytes, over the limit of {cap}")


def _text_values(p: ColumnPlan, raw: list[Any], limits: Limits, problems: _Problems, what: str) -> list[Any]:
    """String and Bytes columns: apply Avro's string <-> bytes promotion, check sizes."""
    out = raw
    if p.dtype.kind is Kind.STRING and p.avro_type in ("bytes", "fixed"):
        out = []
        for i, v in enumerate(raw):
            try:
                out.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                problems.add(i, f"{what} {p.column!r}: bytes are not valid UTF-8")
                out.append(None)
    elif p.dtype.kind is Kind.BYTES and p.avro_type == "string":
        out = [None if v is None else v.encode("utf-8") for v in raw]
    _size_check(p, out, limits, problems, what)
    return out


_NUMERIC_KINDS = (Kind.INT32, Kind.INT64, Kind.FLOAT32, Kind.FLOAT64)


def _list_item(p: ColumnPlan, item: Any) -> Any:
    kind = p.dtype.kind
    if item is None:
        if kind in _NUMERIC_KINDS:
            # Feast's push path has no stable encoding for these: it refuses int lists and writes NaN
            # or 0.0 into float lists depending on the other items.
            raise ValueError(f"has a null item, which {p.dtype} cannot hold in Feast (use NaN for floats)")
        return None
    if kind is Kind.INT32 and not INT32_MIN <= item <= INT32_MAX:
        raise ValueError(f"item {item} is outside the Int32 range")
    if kind is Kind.INT64 and not INT64_MIN <= item <= INT64_MAX:
        raise ValueError(f"item {item} does not fit in 64 bits")
    if kind is Kind.STRING and isinstance(item, bytes):
        return item.decode("utf-8")
    if kind is Kind.BYTES and isinstance(item, str):
        return item.encode("utf-8")
    if kind is Kind.UNIX_TIMESTAMP:
        micros = item * p.to_micros if p.to_micros > 0 else item // -p.to_micros
        if not INT64_MIN <= micros <= INT64_MAX:
            raise ValueError(f"item {item} is out of the timestamp range")
        return pd.Timestamp(micros, unit="us", tz="UTC")
    return item


def _list_values(p: ColumnPlan, raw: list[Any], limits: Limits, problems: _Problems, what: str) -> list[Any]:
    out: list[Any] = []
    text = p.dtype.kind in (Kind.STRING, Kind.BYTES)
    for i, items in enumerate(raw):
        if items is None:
            out.append(None)
            continue
        if len(items) > limits.max_list_items:
            problems.add(i, f"{what} {p.column!r} has {len(items)} items, over the limit of {limits.max_list_items}")
            out.append(None)
            continue
        try:
            converted = [_list_item(p, item) for item in items]
        except (ValueError, UnicodeDecodeError, OverflowError) as exc:
            problems.add(i, f"{what} {p.column!r}: {exc}")
            out.append(None)
            continue
        if text:
            for item in converted:
                if item is not None and len(item) * (4 if isinstance(item, str) else 1) > limits.max_value_bytes:
                    size = len(item) if isinstance(item, bytes) else len(item.encode("utf-8"))
                    if size > limits.max_value_bytes:
                        problems.add(i, f"{what} {p.column!r} has a {size}-byte item, over the limit")
                        break
        out.append(converted)
    return out


def _column(p: ColumnPlan, raw: list[Any], limits: Limits, problems: _Problems, what: str) -> pd.Series:
    """Map one column of decoded values to a push-frame column, recording what is wrong."""
    dtype = p.dtype
    if dtype.is_list:
        return rowmod.feature_series(dtype, _list_values(p, raw, limits, problems, what))
    if dtype.kind in (Kind.STRING, Kind.BYTES):
        return rowmod.feature_series(dtype, _text_values(p, raw, limits, problems, what))
    nulls = None
    if p.nullable and None in raw:
        nulls = np.fromiter((v is None for v in raw), dtype=np.bool_, count=len(raw))
    if dtype.kind in (Kind.FLOAT32, Kind.FLOAT64):
        return rowmod.feature_series(dtype, np.array(raw, dtype=np.float64))
    if dtype.kind is Kind.BOOL:
        return rowmod.feature_series(dtype, np.array([bool(v) for v in raw], dtype=np.bool_), nulls)
    ints = _ints(p, raw, problems, what)
    if dtype.kind is Kind.INT32:
        problems.add_mask((ints < INT32_MIN) | (ints > INT32_MAX),
                          lambda i: f"{what} {p.column!r}: {ints[i]} is outside the Int32 range")
        ints = np.where((ints < INT32_MIN) | (ints > INT32_MAX), 0, ints)
    if dtype.kind is Kind.UNIX_TIMESTAMP:
        return rowmod.feature_series(dtype, _to_micros(p, ints, problems, what), nulls)
    return rowmod.feature_series(dtype, ints, nulls)


def _timestamps(
    p: ColumnPlan, raw: list[Any], problems: _Problems, required: bool, what: str
) -> npt.NDArray[np.int64]:
    """A timestamp field -> int64 milliseconds (NULL_MS where missing and allowed)."""
    micros = _to_micros(p, _ints(p, raw, problems, what), problems, what)
    ms = np.floor_divide(micros, 1000)
    if p.nullable:
        nulls = np.fromiter((v is None for v in raw), dtype=np.bool_, count=len(raw))
        if required:
            problems.add_mask(nulls, f"{what} {p.column!r} is missing")
        ms[nulls] = NULL_MS
    return ms


def _map_group(group: _Group, limits: Limits, now_ms: int) -> tuple[_Part | None, list[tuple[int, str]]]:
    plan, records = group.plan, group.records
    n = len(records)
    problems = _Problems(n)
    columns: dict[str, pd.Series] = {}

    for p in plan.keys:
        raw = [r[p.field] for r in records]
        if p.nullable and None in raw:
            problems.add_mask(np.fromiter((v is None for v in raw), np.bool_, n), f"join key {p.column!r} is null")
        columns[p.column] = _column(p, raw, limits, problems, "join key")
        if p.dtype.kind is Kind.BYTES:
            # Feast cannot serialize (and so never serves) an empty bytes key.
            problems.add_mask(np.fromiter((v is not None and len(v) == 0 for v in raw), np.bool_, n),
                              f"join key {p.column!r} is empty bytes, which Feast cannot serve")

    event_ms = _timestamps(plan.event_ts, [r[plan.event_ts.field] for r in records], problems, True,
                           "event timestamp")
    problems.add_mask(event_ms < 0, lambda i: f"event timestamp {int(event_ms[i])} ms is before 1970")
    if limits.max_future_ms is not None:
        horizon = now_ms + limits.max_future_ms
        problems.add_mask(
            event_ms > horizon,
            lambda i: f"event timestamp {int(event_ms[i])} ms is more than {limits.max_future_ms} ms "
            f"ahead of the consumer clock ({now_ms} ms)",
        )
    if plan.created_ts is not None:
        created_ms = _timestamps(plan.created_ts, [r[plan.created_ts.field] for r in records], problems,
                                 False, "created timestamp")
    else:
        created_ms = np.full(n, NULL_MS, dtype=np.int64)

    for p in plan.features:
        columns[p.column] = _column(p, [r[p.field] for r in records], limits, problems, "feature")

    view = plan.view
    event_series = rowmod.micros_to_series(np.where(problems.bad, 0, event_ms) * 1000)
    frame_cols = {name: columns[name] for name, _ in view.join_keys}
    frame_cols[view.timestamp_field] = event_series
    if view.created_timestamp_field:
        frame_cols[view.created_timestamp_field] = rowmod.micros_to_series(
            np.where(created_ms == NULL_MS, 0, created_ms) * 1000, created_ms == NULL_MS
        )
    for feature in view.features:
        frame_cols[feature.name] = columns[feature.name]

    bad = [(group.positions[i], reason) for i, reason in sorted(problems.reasons.items())]
    keep = ~problems.bad
    if not keep.any():
        return None, bad
    positions = np.asarray(group.positions, dtype=np.int64)
    if problems.bad.any():
        frame_cols = {k: v[keep].reset_index(drop=True) for k, v in frame_cols.items()}
        return _Part(frame_cols, event_ms[keep], created_ms[keep], positions[keep]), bad
    return _Part(frame_cols, event_ms, created_ms, positions), bad


# --------------------------------------------------------------------------- coalescing


def newest_per_key(
    codes: npt.NDArray[np.int64],
    event_ms: npt.NDArray[np.int64],
    created_ms: npt.NDArray[np.int64],
    positions: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Indices of the newest row per key code, in arrival order.

    Newest: greatest (event_ms, created_ms, position), compared in that order.
    """
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((positions, created_ms, event_ms, codes))
    sorted_codes = codes[order]
    last = np.ones(order.size, dtype=np.bool_)
    last[:-1] = sorted_codes[1:] != sorted_codes[:-1]
    return np.sort(order[last])


# Not UnixTimestamp: its frame column holds microseconds, but Feast keys it by whole seconds, so two
# values a fraction of a second apart are one entity.
_INT_KEY_KINDS = (Kind.INT64, Kind.INT32)


def _coalesce(view: FeatureView, parts: list[_Part]) -> ViewBatch:
    if len(parts) == 1:
        part = parts[0]
        frame = pd.DataFrame(part.columns, copy=False)
        event_ms, created_ms, positions = part.event_ms, part.created_ms, part.positions
    else:
        frame = pd.concat([pd.DataFrame(p.columns) for p in parts], ignore_index=True)
        event_ms = np.concatenate([p.event_ms for p in parts])
        created_ms = np.concatenate([p.created_ms for p in parts])
        positions = np.concatenate([p.positions for p in parts])
        order = np.argsort(positions, kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        event_ms, created_ms, positions = event_ms[order], created_ms[order], positions[order]
    join_keys = view.join_keys
    if len(join_keys) == 1 and join_keys[0][1].kind in _INT_KEY_KINDS:
        # One integer key: it tells entities apart by itself; hex keys are built for the winners only.
        codes = frame[join_keys[0][0]].to_numpy(dtype=np.int64)
        keys = None
    else:
        keys = rowmod.entity_keys(view, frame)
        codes = pd.factorize(np.asarray(keys, dtype=object))[0].astype(np.int64)
    winners = newest_per_key(codes, event_ms, created_ms, positions)
    if winners.size != len(frame):
        frame = frame.iloc[winners].reset_index(drop=True)
        keys = None if keys is None else [keys[i] for i in winners.tolist()]
        event_ms, created_ms = event_ms[winners], created_ms[winners]
    encoded = rowmod.encode_frame(view, frame, keys, event_ms=event_ms, created_ms=created_ms)
    return ViewBatch(view, frame, encoded, positions[winners], records=len(positions),
                     superseded=len(positions) - len(winners))
