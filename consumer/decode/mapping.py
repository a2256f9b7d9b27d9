"""Mapping raw column values to a view's push-frame columns, with every check a record must pass.

The stream (decoded Avro records) and the backfill (a push frame's columns) both come through here: a
`Plan` says how each view column's raw values are read, and `map_columns` turns them into push-frame
columns, refusing the records (by index, with the reason) whose values a view row cannot hold: a null
join key, a value out of its dtype's range, an over-long value or list, an event time before 1970 or too
far ahead of the consumer's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from consumer.core.dtypes import DTYPES, Dtype, Kind
from consumer.core.guard import NULL_MS
from consumer.core.policy import Limits
from consumer.core.views import FeatureView
from consumer.feast.frame import Column

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ColumnPlan:
    """How one view column is read from raw values (a decoded record's field, or a push frame's column)."""

    column: str
    field: str
    dtype: Dtype
    nullable: bool
    # A scalar text column whose values arrive as the other text type (Avro promotes string <-> bytes).
    text_from: Kind | None = None
    # For timestamps: multiplier to microseconds (negative: divisor); 0 when not a timestamp.
    to_micros: int = 0


@dataclass(frozen=True)
class Plan:
    """How a view's columns are read: from a writer schema resolved against the view, or from a push frame."""

    view: FeatureView
    schema_id: int | None
    keys: tuple[ColumnPlan, ...]
    features: tuple[ColumnPlan, ...]
    event_ts: ColumnPlan
    created_ts: ColumnPlan | None

    @property
    def columns(self) -> tuple[ColumnPlan, ...]:
        stamps = (self.event_ts,) if self.created_ts is None else (self.event_ts, self.created_ts)
        return (*self.keys, *stamps, *self.features)

    @classmethod
    def for_frame(cls, view: FeatureView) -> Plan:
        """A push frame's columns, by name: values of the columns' own dtypes, timestamps in microseconds."""

        def column(name: str, dtype: Dtype) -> ColumnPlan:
            return ColumnPlan(name, name, dtype, True, None, 1 if dtype.kind is Kind.UNIX_TIMESTAMP else 0)

        stamp = DTYPES["UnixTimestamp"]
        return cls(
            view=view,
            schema_id=None,
            keys=tuple(column(e.name, e.value_type) for e in view.entities),
            features=tuple(column(f.name, f.dtype) for f in view.features),
            event_ts=column(view.timestamp_field, stamp),
            created_ts=column(view.created_timestamp_field, stamp) if view.created_timestamp_field else None,
        )


@dataclass
class Part:
    columns: dict[str, Column]  # the push frame's columns, in its order
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
    if p.dtype.kind is Kind.STRING and p.text_from is Kind.BYTES:
        out = []
        for i, v in enumerate(raw):
            try:
                out.append(None if v is None else v.decode("utf-8"))
            except UnicodeDecodeError:
                problems.add(i, f"{what} {p.column!r}: bytes are not valid UTF-8")
                out.append(None)
    elif p.dtype.kind is Kind.BYTES and p.text_from is Kind.STRING:
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


def _column(p: ColumnPlan, raw: list[Any], limits: Limits, problems: _Problems, what: str) -> Column:
    """Map one column of decoded values to a push-frame column, recording what is wrong."""
    dtype = p.dtype
    if dtype.is_list:
        return Column(dtype, _list_values(p, raw, limits, problems, what))
    if dtype.kind in (Kind.STRING, Kind.BYTES):
        return Column(dtype, _text_values(p, raw, limits, problems, what))
    nulls = None
    if p.nullable and None in raw:
        nulls = np.fromiter((v is None for v in raw), dtype=np.bool_, count=len(raw))
    if dtype.kind in (Kind.FLOAT32, Kind.FLOAT64):
        return Column(dtype, np.array(raw, dtype=np.float64))
    if dtype.kind is Kind.BOOL:
        return Column(dtype, np.array([bool(v) for v in raw], dtype=np.bool_), nulls)
    ints = _ints(p, raw, problems, what)
    if dtype.kind is Kind.INT32:
        problems.add_mask((ints < INT32_MIN) | (ints > INT32_MAX),
                          lambda i: f"{what} {p.column!r}: {ints[i]} is outside the Int32 range")
        ints = np.where((ints < INT32_MIN) | (ints > INT32_MAX), 0, ints)
    if dtype.kind is Kind.UNIX_TIMESTAMP:
        return Column(dtype, _to_micros(p, ints, problems, what), nulls)
    return Column(dtype, ints, nulls)


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


def map_columns(plan: Plan, raw_columns: Mapping[str, list[Any]], positions: Sequence[int], limits: Limits,
                now_ms: int) -> tuple[Part | None, list[tuple[int, str]]]:
    """The view's push-frame columns from raw values (per `plan.columns`, keyed by column name), and the
    position (from `positions`) and reason of every record refused. None when every record was refused."""
    n = len(positions)
    problems = _Problems(n)
    columns: dict[str, Column] = {}

    for p in plan.keys:
        raw = raw_columns[p.column]
        if p.nullable and None in raw:
            problems.add_mask(np.fromiter((v is None for v in raw), np.bool_, n), f"join key {p.column!r} is null")
        columns[p.column] = _column(p, raw, limits, problems, "join key")
        if p.dtype.kind is Kind.BYTES:
            # Feast cannot serialize (and so never serves) an empty bytes key.
            problems.add_mask(np.fromiter((v is not None and len(v) == 0 for v in raw), np.bool_, n),
                              f"join key {p.column!r} is empty bytes, which Feast cannot serve")

    event_ms = _timestamps(plan.event_ts, raw_columns[plan.event_ts.column], problems, True,
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
        created_ms = _timestamps(plan.created_ts, raw_columns[plan.created_ts.column], problems,
                                 False, "created timestamp")
    else:
        created_ms = np.full(n, NULL_MS, dtype=np.int64)

    for p in plan.features:
        columns[p.column] = _column(p, raw_columns[p.column], limits, problems, "feature")

    view = plan.view
    stamp = DTYPES["UnixTimestamp"]
    frame_cols = {name: columns[name] for name, _ in view.join_keys}
    frame_cols[view.timestamp_field] = Column(stamp, np.where(problems.bad, 0, event_ms) * 1000)
    if view.created_timestamp_field:
        frame_cols[view.created_timestamp_field] = Column(
            stamp, np.where(created_ms == NULL_MS, 0, created_ms) * 1000, created_ms == NULL_MS
        )
    for feature in view.features:
        frame_cols[feature.name] = columns[feature.name]

    bad = [(positions[i], reason) for i, reason in sorted(problems.reasons.items())]
    keep = ~problems.bad
    if not keep.any():
        return None, bad
    kept = np.asarray(positions, dtype=np.int64)
    if problems.bad.any():
        rows = np.flatnonzero(keep)
        frame_cols = {k: v.take(rows) for k, v in frame_cols.items()}
        return Part(frame_cols, event_ms[keep], created_ms[keep], kept[keep]), bad
    return Part(frame_cols, event_ms, created_ms, kept), bad


