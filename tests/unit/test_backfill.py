"""Backfill through the guard (with the in-memory store; tests/integration runs it against Cassandra)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from consumer.backfill import backfill, frame_records, read_frame
from consumer.batch import Limits
from consumer.errors import ConfigError
from tests.fakes import FakeStore
from tests.helpers import driver_view
from tests.workload import entity_key

T = pd.Timestamp("2026-11-20T10:00:00Z")


def frame(ids: list[int], hours: list[int], conv: list[float], created_hours: list[int] | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "driver_id": ids,
        "event_timestamp": [T + pd.Timedelta(hours=h) for h in hours],
        "created": [T + pd.Timedelta(hours=h) for h in (created_hours or hours)],
        "conv_rate": np.array(conv, dtype=np.float32),
        "acc_rate": np.array(conv, dtype=np.float32),
        "avg_daily_trips": [int(c * 100) for c in conv],
    })


def stored_event_hours(store: FakeStore, driver: int) -> set[float]:
    cells = store.read(driver_view(), entity_key(driver))
    return {(c.event_ms - T.value // 1_000_000) / 3_600_000 for c in cells.values()}


def run(store: FakeStore, data: pd.DataFrame, limits: Limits | None = None):  # type: ignore[no-untyped-def]
    return backfill(driver_view(), data, store, limits or Limits(max_future_ms=None), chunk_size=2, progress=None)


def test_a_backfill_of_older_rows_never_overwrites_newer_streamed_values() -> None:
    store = FakeStore()
    view = driver_view()
    from consumer.rows import EncodedRows

    streamed = EncodedRows([entity_key(1), entity_key(2)], np.array([T.value // 1_000_000 + 5 * 3_600_000] * 2),
                           np.array([0, 0]), {f.name: [b"stream"] * 2 for f in view.features})
    store.write(view, streamed)  # the stream wrote hour 5 for drivers 1 and 2
    summary = run(store, frame([1, 2, 3], [1, 9, 2], [0.1, 0.2, 0.3]))
    assert (summary.read, summary.written, summary.stale, summary.rejected) == (3, 2, 1, 0)
    assert stored_event_hours(store, 1) == {5}  # older backfill: skipped
    assert stored_event_hours(store, 2) == {9}  # newer backfill: written
    assert stored_event_hours(store, 3) == {2}  # no stream value: written


def test_a_stream_after_a_backfill_wins_only_where_it_is_newer() -> None:
    store = FakeStore()
    run(store, frame([1, 2], [3, 3], [0.1, 0.2]))
    assert run(store, frame([1, 2], [4, 2], [0.5, 0.6])).written == 1
    assert stored_event_hours(store, 1) == {4}
    assert stored_event_hours(store, 2) == {3}


def test_rejected_rows_are_counted_with_their_reason_and_the_rest_is_written() -> None:
    store = FakeStore()
    data = frame([1, 2, 3], [1, 1, 1], [0.1, 0.2, 0.3])
    data["driver_id"] = pd.array([1, None, 3], dtype="Int64")
    data.loc[2, "event_timestamp"] = pd.NaT
    summary = run(store, data)
    assert (summary.read, summary.written, summary.rejected) == (3, 1, 2)
    assert dict(summary.reasons) == {
        "join key 'driver_id' is null": 1, "event timestamp 'event_timestamp' is missing": 1}
    assert "rejected 1: join key 'driver_id' is null" in summary.render()


def test_rows_of_one_entity_in_the_file_coalesce_to_the_newest() -> None:
    store = FakeStore()
    summary = backfill(driver_view(), frame([7, 7, 7], [1, 3, 2], [0.1, 0.3, 0.2]), store,
                       Limits(max_future_ms=None), chunk_size=10, progress=None)
    assert (summary.written, summary.superseded) == (1, 2)
    assert stored_event_hours(store, 7) == {3}


def test_a_missing_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no columns \['acc_rate'\]"):
        frame_records(driver_view(), frame([1], [1], [0.1]).drop(columns=["acc_rate"]))


def test_csv_timestamps_are_read_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    frame([1], [1], [0.5]).to_csv(path, index=False)
    store = FakeStore()
    assert run(store, read_frame(path)).written == 1
    assert stored_event_hours(store, 1) == {1}


def test_progress_is_reported() -> None:
    out = io.StringIO()
    backfill(driver_view(), frame([1, 2, 3], [1, 1, 1], [0.1, 0.2, 0.3]), FakeStore(), Limits(max_future_ms=None),
             chunk_size=2, progress=out, progress_every_s=0)
    assert out.getvalue().splitlines()[-1].startswith("backfill driver_hourly_stats: 3/3 rows (100%)")
