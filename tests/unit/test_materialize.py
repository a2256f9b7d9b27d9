"""Guarded materialization (consumer/materialize.py, consumer/feast/offline.py) without Feast: the offline side
is a stand-in, the store the in-memory model. tests/feast_compat/test_materialize.py runs Feast 0.67 itself."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from consumer.cli import main, moment
from consumer.core.errors import ConfigError, StoreMisconfigured
from consumer.core.policy import Limits
from consumer.core.store import EncodedRows
from consumer.core.views import FeatureView
from consumer.feast.offline import FeastOffline, OfflineRows, incremental_start, source_columns
from consumer.materialize import materialize
from tests.fakes import FakeStore
from tests.helpers import driver_view, driver_view_spec
from tests.workload import entity_key

T = datetime(2026, 11, 20, 10, tzinfo=UTC)
END = T + timedelta(days=1)
LIMITS = Limits(max_future_ms=None)


def rows(ids: list[int], hours: list[int], trips: list[int], created: list[int | None] | None = None) -> pd.DataFrame:
    stamps = [T + timedelta(hours=h) for h in hours]
    return pd.DataFrame({
        "driver_id": ids,
        "event_timestamp": pd.Series(stamps, dtype="datetime64[ns, UTC]"),
        "created": pd.Series([None if c is None else T + timedelta(hours=c) for c in (created or hours)],
                             dtype="datetime64[ns, UTC]"),
        "conv_rate": np.array([t / 1000 for t in trips], dtype=np.float32),
        "acc_rate": np.array([t / 1000 for t in trips], dtype=np.float32),
        "avg_daily_trips": trips,
    })


class Offline:
    """The offline side as materialize sees it: frames per view, an incremental start, recorded intervals."""

    def __init__(self, data: dict[str, pd.DataFrame], starts: dict[str, datetime] | None = None,
                 fail: dict[str, Exception] | None = None, chunk: int = 2) -> None:
        self.data, self.starts, self.fail, self.chunk = data, starts or {}, fail or {}, chunk
        self.recorded: list[tuple[str, datetime, datetime]] = []
        self.reads: list[tuple[str, datetime, datetime]] = []

    def incremental_start(self, name: str, now: datetime) -> datetime:
        return self.starts.get(name, now - timedelta(days=3))

    def read(self, view: FeatureView, start: datetime, end: datetime, chunk_rows: int) -> OfflineRows:
        self.reads.append((view.name, start, end))
        frame = self.data[view.name]

        def frames() -> Iterator[pd.DataFrame]:
            for i in range(0, len(frame), self.chunk):
                if view.name in self.fail and i > 0:
                    raise self.fail[view.name]
                yield frame.iloc[i:i + self.chunk].reset_index(drop=True)

        return OfflineRows(len(frame), frames())

    def record(self, name: str, start: datetime, end: datetime) -> None:
        self.recorded.append((name, start, end))


def stored_trips(store: FakeStore, view: FeatureView, driver: int) -> int:
    from consumer.core.dtypes import DTYPES
    from consumer.feast.values import decode_value

    return int(decode_value(DTYPES["Int64"], store.read(view, entity_key(driver))["avg_daily_trips"].value))


def stream_write(store: FakeStore, view: FeatureView, driver: int, hour: int, trips: int,
                 created: int | None = None) -> None:
    from consumer.feast.values import encode_value

    event_ms = int((T + timedelta(hours=hour)).timestamp() * 1000)
    created_ms = event_ms if created is None else int((T + timedelta(hours=created)).timestamp() * 1000)
    values = {f.name: [encode_value(f.dtype, trips if f.name == "avg_daily_trips" else trips / 1000)]
              for f in view.features}
    store.write(view, EncodedRows([entity_key(driver)], np.array([event_ms]), np.array([created_ms]), values))


def test_offline_rows_go_through_the_guard_and_the_interval_is_recorded() -> None:
    view, store = driver_view(), FakeStore()
    stream_write(store, view, 1, 5, 105)   # the stream holds hour 5 for driver 1
    stream_write(store, view, 2, 5, 205)   # and for driver 2
    # Offline: driver 1 up to hour 3 (older), driver 2 up to hour 8 (newer), driver 3 only offline.
    offline = Offline({view.name: rows([1, 1, 2, 2, 3], [1, 3, 2, 8, 4], [101, 103, 202, 208, 304])})
    runs = materialize([view], offline, store, LIMITS, END, start=T, progress=None)
    assert [stored_trips(store, view, d) for d in (1, 2, 3)] == [105, 208, 304]
    (run,) = runs
    assert run.ok and run.recorded and offline.recorded == [(view.name, T, END)]
    s = run.summary
    assert (s.read, s.superseded, s.written, s.stale, s.rejected) == (5, 2, 2, 1, 0)
    assert "superseded in the offline rows" in run.render() and "recorded in the registry" in run.render()


def test_ties_on_event_time_go_to_the_newer_created_time_whichever_side_holds_it() -> None:
    view, store = driver_view(), FakeStore()
    stream_write(store, view, 1, 5, 105, created=6)  # stream: hour 5, created 6
    stream_write(store, view, 2, 5, 205, created=6)
    offline = Offline({view.name: rows([1, 2], [5, 5], [1, 2], created=[7, None])})
    materialize([view], offline, store, LIMITS, END, start=T, progress=None)
    assert stored_trips(store, view, 1) == 1    # offline created later: it wins the tie
    assert stored_trips(store, view, 2) == 205  # offline without a created time: the oldest


def test_a_view_that_fails_part_way_records_nothing_and_the_next_view_goes_on() -> None:
    first, second, third = driver_view(), driver_view(name="second"), driver_view(name="third")
    data = {v.name: rows([1, 2, 3], [1, 2, 3], [1, 2, 3]) for v in (first, second, third)}
    offline = Offline(data, fail={"second": StoreMisconfigured("table second does not exist")})
    runs = materialize([first, second, third], offline, FakeStore(), LIMITS, END, start=T, progress=None)
    assert [r.recorded for r in runs] == [True, False, True]
    assert runs[1].error is not None and "does not exist" in runs[1].error
    assert "not recorded; running the command again is safe" in runs[1].render()
    assert [name for name, _, _ in offline.recorded] == ["driver_hourly_stats", "third"]


def test_cassandra_unreachable_stops_the_run_and_the_views_not_begun_are_not_run() -> None:
    first, second = driver_view(), driver_view(name="second")
    store = FakeStore()
    store.down = True
    offline = Offline({v.name: rows([1], [1], [1]) for v in (first, second)})
    runs = materialize([first, second], offline, store, LIMITS, END, start=T, progress=None)
    assert offline.recorded == [] and [r.recorded for r in runs] == [False, False]
    assert runs[0].error == "fake store is down"
    assert runs[1].error == f"not run: the run ended at {first.name}"
    assert [name for name, _, _ in offline.reads] == [first.name]


def test_a_stop_asked_for_ends_the_view_without_recording_it() -> None:
    view, stop = driver_view(), threading.Event()
    store = FakeStore()
    offline = Offline({view.name: rows([1, 2, 3, 4], [1, 1, 1, 1], [1, 2, 3, 4])})
    original = store.write

    def write_then_stop(*args: Any, **kwargs: Any) -> Any:
        stop.set()
        return original(*args, **kwargs)

    store.write = write_then_stop  # type: ignore[method-assign]
    (run,) = materialize([view], offline, store, LIMITS, END, start=T, progress=None, stop=stop)
    assert run.error == "stopped after 2 rows" and not run.recorded and offline.recorded == []


def test_incremental_runs_start_where_the_registry_says_and_skip_views_already_done() -> None:
    fresh, done = driver_view(), driver_view(name="done")
    offline = Offline({fresh.name: rows([1], [1], [1]), done.name: rows([1], [1], [1])},
                      starts={fresh.name: T - timedelta(hours=1), done.name: END})
    runs = materialize([fresh, done], offline, FakeStore(), LIMITS, END, progress=None)
    assert offline.recorded == [(fresh.name, T - timedelta(hours=1), END)]
    assert runs[1].ok and not runs[1].recorded and "nothing to do" in runs[1].render()


def test_rejected_rows_are_counted_the_others_written_and_the_interval_recorded() -> None:
    view, store = driver_view(), FakeStore()
    data = rows([1, 2], [1, 1], [1, 2])
    data.loc[1, "event_timestamp"] = pd.NaT
    offline = Offline({view.name: data})
    (run,) = materialize([view], offline, store, LIMITS, END, start=T, progress=None)
    assert (run.summary.written, run.summary.rejected) == (1, 1) and run.recorded and not run.ok
    assert "rejected 1: event timestamp 'event_timestamp' is missing" in run.render()


def test_progress_shows_the_rate_and_the_time_left() -> None:
    ticks = iter(range(100))
    out = io.StringIO()
    view = driver_view()
    offline = Offline({view.name: rows([1, 2, 3, 4], [1, 1, 1, 1], [1, 2, 3, 4])})
    materialize([view], offline, FakeStore(), LIMITS, END, start=T, progress=out, progress_every_s=0,
                clock=lambda: float(next(ticks)))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("materialize driver_hourly_stats: 2/4 rows (50%), ") and lines[0].endswith(" s left")
    assert lines[-1].startswith("materialize driver_hourly_stats: 4/4 rows (100%), ") and "left" not in lines[-1]
    assert len(lines) == 2


# ---------------------------------------------------------------------------------- Feast's side, stood in


def feast_view(**fields: Any) -> SimpleNamespace:
    base = {"name": "v", "most_recent_end_time": None, "ttl": timedelta(hours=6)}
    return SimpleNamespace(**{**base, **fields})


def test_incremental_start_follows_feasts_rule() -> None:
    now = T
    assert incremental_start(feast_view(most_recent_end_time=datetime(2026, 11, 19, 8)), now) == \
        datetime(2026, 11, 19, 8, tzinfo=UTC)  # a naive time from the registry is UTC
    assert incremental_start(feast_view(), now) == now - timedelta(hours=6)
    assert incremental_start(feast_view(ttl=timedelta(0)), now) == now - timedelta(weeks=52)
    with pytest.raises(ConfigError, match="never materialized and has no ttl"):
        incremental_start(feast_view(ttl=None), now)


def batch_source(**fields: Any) -> SimpleNamespace:
    base = {"field_mapping": {}, "timestamp_field": "event_timestamp", "created_timestamp_column": "created"}
    return SimpleNamespace(**{**base, **fields})


def test_columns_are_asked_by_the_batch_sources_names_and_renamed_to_the_views() -> None:
    view = driver_view()
    source = batch_source(field_mapping={"id": "driver_id", "trips": "avg_daily_trips"}, timestamp_field="ts",
                          created_timestamp_column="made")
    columns = source_columns(view, source)
    assert columns.keys == ["id"] and columns.features == ["conv_rate", "acc_rate", "trips"]
    assert (columns.timestamp, columns.created) == ("ts", "made")
    assert columns.renames == {"id": "driver_id", "conv_rate": "conv_rate", "acc_rate": "acc_rate",
                               "trips": "avg_daily_trips", "ts": "event_timestamp", "made": "created"}
    plain = source_columns(driver_view(created_timestamp_field=None), batch_source(created_timestamp_column=""))
    assert plain.created is None and "created" not in plain.renames


class Job:
    def __init__(self, table: pa.Table, streamed: bool = False) -> None:
        self.table = table
        if streamed:
            self.to_arrow_batches = lambda: iter([table.slice(0, 3), table.slice(3)])

    def to_arrow(self) -> pa.Table:
        return self.table


class OfflineStore:
    def __init__(self, table: pa.Table, streamed: bool = False) -> None:
        self.table, self.streamed, self.calls = table, streamed, []

    def pull_all_from_table_or_query(self, **kwargs: Any) -> Job:
        self.calls.append(("all", kwargs))
        return Job(self.table, self.streamed)

    def pull_latest_from_table_or_query(self, **kwargs: Any) -> Job:
        self.calls.append(("latest", kwargs))
        return Job(self.table, self.streamed)


def feast_offline(table: pa.Table, pull_latest: bool = False, streamed: bool = False) -> FeastOffline:
    source = batch_source(field_mapping={"id": "driver_id"})
    view = SimpleNamespace(name="driver_hourly_stats", batch_source=source, online=True)
    store = SimpleNamespace(
        project="feast_demo",
        config=SimpleNamespace(materialization_config=SimpleNamespace(pull_latest_features=pull_latest)),
        list_stream_feature_views=lambda allow_cache: [],
        list_feature_views=lambda allow_cache: [view],
    )
    return FeastOffline(store, OfflineStore(table, streamed))


def source_table() -> pa.Table:
    frame = rows([2, 1, 2, 1, 1], [5, 1, 3, 5, 5], [25, 11, 23, 151, 152], created=[5, 1, 3, None, 5])
    return pa.Table.from_pandas(frame.rename(columns={"driver_id": "id"}), preserve_index=False)


def test_every_row_of_the_window_is_read_with_each_entitys_rows_together_oldest_first() -> None:
    offline = feast_offline(source_table())
    read = offline.read(driver_view(), T, END, chunk_rows=2)
    frames = list(read.frames)
    assert read.total == 5 and [len(f) for f in frames] == [2, 2, 1]
    together = pd.concat(frames, ignore_index=True)
    assert together["driver_id"].tolist() == [1, 1, 1, 2, 2]
    assert together["avg_daily_trips"].tolist() == [11, 151, 152, 23, 25]  # a missing created time first
    kind, call = offline.offline_store.calls[0]
    assert kind == "all" and call["join_key_columns"] == ["id"] and call["created_timestamp_column"] == "created"
    assert (call["start_date"], call["end_date"]) == (T, END)


def test_the_repos_pull_latest_setting_asks_the_offline_store_for_the_newest_rows_instead() -> None:
    offline = feast_offline(source_table(), pull_latest=True)
    list(offline.read(driver_view(), T, END, chunk_rows=10).frames)
    assert offline.offline_store.calls[0][0] == "latest"


def test_a_store_that_streams_its_answer_is_read_in_parts_without_a_total() -> None:
    read = feast_offline(source_table(), streamed=True).read(driver_view(), T, END, chunk_rows=2)
    assert read.total is None and [len(f) for f in read.frames] == [2, 1, 2]


def test_materialized_rows_of_the_same_entity_across_chunks_end_newest() -> None:
    offline, store = feast_offline(source_table()), FakeStore()

    class Recording:
        def incremental_start(self, name: str, now: datetime) -> datetime:
            return T

        def read(self, view: FeatureView, start: datetime, end: datetime, chunk_rows: int) -> OfflineRows:
            return offline.read(view, start, end, 2)

        def record(self, name: str, start: datetime, end: datetime) -> None:
            pass

    (run,) = materialize([driver_view()], Recording(), store, LIMITS, END, start=T, progress=None)
    assert stored_trips(store, driver_view(), 1) == 152 and stored_trips(store, driver_view(), 2) == 25
    assert run.summary.read == 5 and run.summary.superseded + run.summary.stale + run.summary.written == 5


def test_views_are_chosen_among_those_the_daemon_writes() -> None:
    offline = feast_offline(source_table())
    ours = [driver_view(), driver_view(name="from_the_config_file")]
    assert [v.name for v in offline.select(ours, None)] == ["driver_hourly_stats"]
    with pytest.raises(ConfigError, match=r"--views \['other'\]: not views this daemon writes"):
        offline.select(ours, ["other"])


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-30T06:00:00", datetime(2026, 11, 30, 6, tzinfo=UTC)),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
    ("2026-11-30T07:00:00+01:00", datetime(2026, 11, 30, 6, tzinfo=UTC)),
    ("2026-11-30T06:00:00Z", datetime(2026, 11, 30, 6, tzinfo=UTC)),
    ("now", datetime.fromtimestamp(1_800_000_000, UTC)),
])
def test_times_are_iso_8601_naive_meaning_utc_or_now(text: str, expected: datetime) -> None:
    assert moment(text, 1_800_000_000) == expected


def test_a_bad_time_or_no_feast_repo_is_a_configuration_error(tmp_path: Any, capsys: Any) -> None:
    with pytest.raises(ConfigError, match="not an ISO 8601 time"):
        moment("yesterday", 0)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"views": [driver_view_spec()]}))
    assert main(["materialize-incremental", "-c", str(config), "now"]) == 2
    assert "materialize-incremental reads a Feast repo: give --feast-repo PATH" in capsys.readouterr().err
