"""Backfill through the guard (with the in-memory store; tests/integration runs it against Cassandra)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from consumer.backfill import backfill, frame_columns, push_frame, read_frame
from consumer.cli import main
from consumer.core.errors import ConfigError
from consumer.core.policy import Limits
from tests.fakes import FakeStore
from tests.helpers import driver_view, driver_view_spec
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
    from consumer.core.store import EncodedRows

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


def test_rejected_rows_are_named_by_their_row_in_the_file_even_after_empty_rows() -> None:
    data = frame([1, 2, 3, 4], [1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4])
    for feature in FEATURES:
        data[feature] = data[feature].astype("float64")
    data.loc[0, FEATURES] = np.nan  # nothing found: left out
    data.loc[2, "event_timestamp"] = pd.NaT  # rejected: the file's row 2
    summary = run(FakeStore(), data)
    assert (summary.read, summary.empty, summary.rejected) == (4, 1, 1)
    assert summary.examples == ["row 2: event timestamp 'event_timestamp' is missing"]


def test_rows_of_one_entity_in_the_file_coalesce_to_the_newest() -> None:
    store = FakeStore()
    summary = backfill(driver_view(), frame([7, 7, 7], [1, 3, 2], [0.1, 0.3, 0.2]), store,
                       Limits(max_future_ms=None), chunk_size=10, progress=None)
    assert (summary.written, summary.superseded) == (1, 2)
    assert stored_event_hours(store, 7) == {3}


def test_a_missing_column_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no columns \['acc_rate'\]"):
        frame_columns(driver_view(), frame([1], [1], [0.1]).drop(columns=["acc_rate"]))


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


# A view whose offline source stamps its rows `datetime`: get_historical_features does not keep that name.
HISTORICAL_VIEW = driver_view(timestamp_field="datetime")
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]


def historical_frame() -> pd.DataFrame:
    """Shaped as Feast 0.67's `get_historical_features(entity_df, features, full_feature_names=True).to_df()`
    returns it for driver_hourly_stats (checked against Feast 0.67's file offline store): first the entity
    frame's own columns, the join key and its time column `event_timestamp`, which Feast converts to UTC
    and keeps in nanoseconds; then one `<view>__<feature>` column per feature, in the source's dtypes. The
    view's own timestamp and created columns are not there. Driver 3 matched no source row within the
    view's ttl: its features are missing, and that turns the Int64 column into float64 (NaN)."""
    return pd.DataFrame({
        "driver_id": np.array([1, 2, 3], dtype=np.int64),
        "event_timestamp": pd.Series([T + pd.Timedelta(hours=h) for h in (1, 2, 3)], dtype="datetime64[ns, UTC]"),
        "driver_hourly_stats__conv_rate": np.array([0.5, 0.25, np.nan], dtype=np.float32),
        "driver_hourly_stats__acc_rate": np.array([0.75, 1.0, np.nan], dtype=np.float32),
        "driver_hourly_stats__avg_daily_trips": np.array([12, 7, np.nan], dtype=np.float64),
    })


def found_rows(data: pd.DataFrame) -> pd.DataFrame:
    """What docs/feast.md says to load: the rows for which Feast found values."""
    return data.dropna(subset=[f"driver_hourly_stats__{f}" for f in FEATURES], how="all")


def same_rows_as_a_push_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "driver_id": [1, 2],
        "datetime": [T + pd.Timedelta(hours=1), T + pd.Timedelta(hours=2)],
        "conv_rate": np.array([0.5, 0.25], dtype=np.float32),
        "acc_rate": np.array([0.75, 1.0], dtype=np.float32),
        "avg_daily_trips": [12, 7],
    })


def test_a_get_historical_features_frame_stores_what_the_same_push_frame_stores() -> None:
    from_feast, from_push = FakeStore(), FakeStore()
    summary = backfill(HISTORICAL_VIEW, found_rows(historical_frame()), from_feast, Limits(max_future_ms=None),
                       progress=None, timestamp_column="event_timestamp")
    backfill(HISTORICAL_VIEW, same_rows_as_a_push_frame(), from_push, Limits(max_future_ms=None), progress=None)
    assert (summary.read, summary.written, summary.rejected) == (2, 2, 0)
    assert from_feast.tables == from_push.tables
    # No created column in Feast's frame: written as null, the oldest created time.
    cells = from_feast.read(HISTORICAL_VIEW, entity_key(1))
    assert {(c.event_ms, c.created_ms) for c in cells.values()} == {((T + pd.Timedelta(hours=1)).value // 10**6, None)}


def test_rows_feast_found_nothing_for_are_left_out_not_written_as_nulls() -> None:
    store = FakeStore()
    older = backfill(HISTORICAL_VIEW, same_rows_as_a_push_frame(), store, Limits(max_future_ms=None), progress=None)
    assert older.written == 2
    newer = historical_frame()
    newer["driver_id"] = [1, 2, 1]  # driver 1 again, three hours later, with nothing found
    summary = backfill(HISTORICAL_VIEW, newer, store, Limits(max_future_ms=None), progress=None,
                       timestamp_column="event_timestamp")
    assert (summary.read, summary.empty, summary.rejected) == (3, 1, 0)
    assert all(c.value != b"" for c in store.read(HISTORICAL_VIEW, entity_key(1)).values())  # no nulls over values
    kept = backfill(HISTORICAL_VIEW, newer, store, Limits(max_future_ms=None), progress=None,
                    timestamp_column="event_timestamp", keep_empty_rows=True)
    # Asked for, the empty row is written (it is newer), as Feast itself would: nulls over driver 1's values.
    assert (kept.empty, kept.written) == (0, 2)
    assert all(c.value == b"" for c in store.read(HISTORICAL_VIEW, entity_key(1)).values())


def test_the_cli_takes_the_timestamp_column_and_a_parquet_file_feast_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump({"views": [driver_view_spec(timestamp_field="datetime")],
                                      "limits": {"max_future_ms": None}}))
    found_rows(historical_frame()).to_parquet(tmp_path / "history.parquet")
    store = FakeStore()
    monkeypatch.setattr("consumer.cassandra.writer.CassandraStore", lambda settings: store)
    assert main(["backfill", "-c", str(config), "-i", str(tmp_path / "history.parquet"),
                 "--timestamp-column", "event_timestamp"]) == 0
    assert {c.event_ms for c in store.read(HISTORICAL_VIEW, entity_key(2)).values()} == \
        {(T + pd.Timedelta(hours=2)).value // 10**6}


def test_without_the_timestamp_column_the_error_says_which_option_names_it() -> None:
    with pytest.raises(ConfigError, match=r"no columns \['datetime'\] \(--timestamp-column names"):
        backfill(HISTORICAL_VIEW, historical_frame(), FakeStore(), Limits(), progress=None)


def test_a_timestamp_column_the_file_lacks_is_named() -> None:
    with pytest.raises(ConfigError, match="--timestamp-column 'ts': the backfill file has no such column"):
        push_frame(HISTORICAL_VIEW, historical_frame(), "ts")


def test_a_feature_given_both_prefixed_and_plain_is_refused() -> None:
    data = historical_frame().assign(conv_rate=0.0)
    with pytest.raises(ConfigError, match="has both 'driver_hourly_stats__conv_rate' and 'conv_rate'"):
        push_frame(HISTORICAL_VIEW, data, "event_timestamp")


def test_other_views_columns_are_left_alone() -> None:
    data = historical_frame().assign(other_view__conv_rate=1.0)
    renamed = push_frame(HISTORICAL_VIEW, data, "event_timestamp")
    assert list(renamed.columns) == ["driver_id", "datetime", *FEATURES, "other_view__conv_rate"]
