"""Backfill: offline feature rows written through the same guarded path as the stream.

A materialization or `get_historical_features` result (parquet or CSV) is read as a push frame: one
column per join key, the view's timestamp field, its created timestamp field (optional) and one column
per feature. A `get_historical_features` frame names things its own way, and is renamed first (see
`push_frame`). Rows go through the stream's mapping checks, coalescing and Feast encodings, and are
written with the same lightweight-transaction guard, so a backfill never overwrites a newer streamed
value, and a stream never loses to an older backfilled one.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import pandas as pd

from consumer.core.dtypes import Kind
from consumer.core.errors import ConfigError
from consumer.core.policy import Limits
from consumer.core.store import RowStatus, Store
from consumer.core.views import FeatureView
from consumer.decode.coalesce import coalesce
from consumer.decode.mapping import Plan, map_columns
from consumer.feast import frame as rowmod


def read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise ConfigError(f"reading {path} needs pyarrow: pip install 'feature-consumer[parquet]'") from exc
    if suffix == ".csv":
        return pd.read_csv(path)
    raise ConfigError(f"{path}: backfill reads .parquet or .csv files")


def push_frame(view: FeatureView, frame: pd.DataFrame, timestamp_column: str | None = None) -> pd.DataFrame:
    """A `get_historical_features` result renamed to the view's push-frame columns.

    Feast names that frame's event time after the entity frame's column (`event_timestamp` unless the
    caller chose another: `timestamp_column` says which), prefixes each feature with `<view>__` when asked
    for full feature names, and leaves the created timestamp out (it is then written as null). This
    view's prefixed features lose their prefix; other views' columns stay as they are, unread.
    """
    renames: dict[str, str] = {}
    if timestamp_column is not None and timestamp_column != view.timestamp_field:
        if timestamp_column not in frame.columns:
            raise ConfigError(f"--timestamp-column {timestamp_column!r}: the backfill file has no such column")
        renames[timestamp_column] = view.timestamp_field
    for feature in view.features:
        prefixed = f"{view.name}__{feature.name}"
        if prefixed in frame.columns:
            renames[prefixed] = feature.name
    # A column that would be renamed onto one already there: which of the two holds the values is unknown.
    clashes = [f"{old!r} and {new!r}" for old, new in renames.items() if new in frame.columns and new not in renames]
    if clashes:
        raise ConfigError(f"view {view.name!r}: the backfill file has both {', '.join(clashes)}")
    return frame.rename(columns=renames) if renames else frame


def _list_timestamps_us(items: list[Any] | None) -> list[Any] | None:
    if items is None:
        return None
    return [None if v is None else int(pd.Timestamp(v).value // 1000) for v in items]


def frame_columns(view: FeatureView, frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A push frame's columns as the mapping stage reads them (`Plan.for_frame`): timestamps in
    microseconds, missing values None. A missing created timestamp column is all null."""
    missing = [c for c in [*(e.name for e in view.entities), view.timestamp_field, *(f.name for f in view.features)]
               if c not in frame.columns]
    if missing:
        hint = " (--timestamp-column names the event time column)" if view.timestamp_field in missing else ""
        raise ConfigError(f"view {view.name!r}: the backfill file has no columns {missing}{hint}")
    out: dict[str, list[Any]] = {}
    for p in Plan.for_frame(view).columns:
        if p.column not in frame.columns:  # the created timestamp, which Feast's frames leave out
            out[p.column] = [None] * len(frame)
        elif p.dtype.kind is Kind.UNIX_TIMESTAMP and not p.dtype.is_list:
            micros, nulls = rowmod.timestamps_us(frame[p.column])
            out[p.column] = [None if null else v for v, null in zip(micros.tolist(), nulls.tolist(), strict=True)]
        elif p.dtype.kind is Kind.UNIX_TIMESTAMP:
            out[p.column] = [_list_timestamps_us(v) for v in rowmod.object_values(frame[p.column], True)]
        else:
            out[p.column] = rowmod.object_values(frame[p.column], p.dtype.is_list)
    return out


@dataclass
class Summary:
    read: int = 0
    written: int = 0
    stale: int = 0
    superseded: int = 0
    empty: int = 0  # rows without any feature value, not written
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    within: str = "the file"  # where superseded rows were superseded

    def render(self) -> str:
        lines = [f"rows read {self.read}, written {self.written}, skipped as stale {self.stale}, "
                 f"superseded in {self.within} {self.superseded}, without any feature value {self.empty}, "
                 f"rejected {self.rejected}"]
        for reason, count in self.reasons.most_common():
            lines.append(f"  rejected {count}: {reason}")
        lines.extend(f"  e.g. {example}" for example in self.examples)
        return "\n".join(lines)

    def reject(self, reason: str, where: str) -> None:
        self.rejected += 1
        self.reasons[reason.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")


class Progress:
    """A progress line every `every_s` seconds and at the end: rows done, the rate, and the time left when
    the total is known."""

    def __init__(self, label: str, total: int | None, out: TextIO | None, every_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.label, self.total, self.out, self.every_s, self.clock = label, total, out, every_s, clock
        self.started = self.last = clock()
        self.shown: int | None = None

    def update(self, done: int, final: bool = False) -> None:
        now = self.clock()
        due = final or now - self.last >= self.every_s or done == self.total
        if self.out is None or not due or done == self.shown:
            return
        self.last, self.shown = now, done
        rate = done / max(now - self.started, 1e-9)
        if self.total is None:
            line = f"{self.label}: {done} rows, {rate:,.0f} rows/s"
        else:
            share = 100 * done / max(self.total, 1)
            line = f"{self.label}: {done}/{self.total} rows ({share:.0f}%), {rate:,.0f} rows/s"
            if 0 < done < self.total:
                line += f", {_duration((self.total - done) / rate)} left"
        print(line, file=self.out, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def write_chunk(view: FeatureView, chunk: pd.DataFrame, store: Store, limits: Limits, summary: Summary,
                row_numbers: npt.NDArray[np.int64] | None = None, now_ms: int | None = None,
                plan: Plan | None = None) -> None:
    """Map one chunk of a push frame through the stream's checks, keep the newest row per entity, and write
    those through the guard, counting what became of each row into `summary`. `row_numbers` name the
    chunk's rows in rejection examples (default: their position in the chunk)."""
    plan = plan or Plan.for_frame(view)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    numbers = np.arange(len(chunk)) if row_numbers is None else row_numbers
    part, bad = map_columns(plan, frame_columns(view, chunk), range(len(chunk)), limits, now_ms)
    view_batch = None if part is None else coalesce(view, [part])
    summary.read += len(chunk)
    for index, reason in bad:
        summary.reject(reason, f"row {numbers[index]}")
    if view_batch is None:
        return
    summary.superseded += view_batch.superseded
    report = store.write(view, view_batch.rows)
    summary.written += report.count(RowStatus.APPLIED) + report.count(RowStatus.PARTIAL)
    summary.stale += report.count(RowStatus.STALE)
    for row, reason in report.failures.items():
        summary.rejected += 1
        summary.reasons["Cassandra refused the write"] += 1
        if len(summary.examples) < 5:
            summary.examples.append(f"row {numbers[int(view_batch.positions[row])]}: {reason}")


def _chunks(frame: pd.DataFrame, size: int) -> Iterator[tuple[int, pd.DataFrame]]:
    for start in range(0, len(frame), size):
        yield start, frame.iloc[start:start + size]


def backfill(view: FeatureView, frame: pd.DataFrame, store: Store, limits: Limits, chunk_size: int = 5000,
             clock: Callable[[], float] = time.time, progress: TextIO | None = sys.stderr,
             progress_every_s: float = 5.0, timestamp_column: str | None = None,
             keep_empty_rows: bool = False) -> Summary:
    """Write a push frame (or a `get_historical_features` frame, see `push_frame`) through the guard, chunk
    by chunk; returns what became of its rows.

    A row without any feature value is left out unless `keep_empty_rows`: `get_historical_features` gives
    such a row for every entity it found nothing for, stamped with the requested time, and writing it
    would put nulls over older real values.
    """
    frame = push_frame(view, frame, timestamp_column)
    plan = Plan.for_frame(view)
    summary = Summary()
    row_numbers = np.arange(len(frame))  # examples name rows as they are in the file
    if not keep_empty_rows:
        present = [f.name for f in view.features if f.name in frame.columns]
        empty = frame[present].isna().all(axis=1) if present else pd.Series(False, index=frame.index)
        summary.empty = int(empty.sum())
        summary.read += summary.empty
        row_numbers = row_numbers[~empty.to_numpy()]
        frame = frame[~empty.to_numpy()].reset_index(drop=True)
    meter = Progress(f"backfill {view.name}", len(frame) + summary.empty, progress, progress_every_s, clock)
    for start, chunk in _chunks(frame, chunk_size):
        write_chunk(view, chunk, store, limits, summary, row_numbers[start:start + len(chunk)],
                    int(clock() * 1000), plan)
        meter.update(summary.read)
    return summary
