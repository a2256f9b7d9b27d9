"""A Feast repo's offline store and registry, for `feature-consumer materialize` (docs/feast.md).

What Feast 0.67's own materialization takes from them, taken through the same calls:

* A view's rows in a time window come from its batch source through the repo's offline store. Feast's
  local engine asks `pull_all_from_table_or_query` for every row of the window and keeps the newest per
  entity itself, unless the repo sets `materialization: {pull_latest_features: true}`, when it asks
  `pull_latest_from_table_or_query` for the newest row per entity instead. The same setting chooses the
  same call here; the batch source's created timestamp column is asked for whenever it has one. All rows
  of an entity are then handed on together (sorted by join key), and coalescing and the guard keep the
  newest by the stream's own rule: event time, then created time.
* Column names are the batch source's: the view's names mapped back through its `field_mapping`, and
  renamed to the view's push-frame names (join keys, the view's timestamp and created fields, features)
  on the way out.
* An incremental run starts where the view's latest materialized interval ended; a view never
  materialized starts at now minus its ttl (a year back when the ttl is 0; without a ttl there is no
  start, as in Feast).
* A view done is recorded in the registry as Feast records it (`apply_materialization`): the interval,
  which `feast feature-views list` and Feast's own incremental runs read.

Feast's SDK is imported only here and in repo.py, lazily, in an environment that has it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from consumer.core.errors import ConfigError
from consumer.core.views import FeatureView
from consumer.feast.repo import with_feature_store

log = logging.getLogger(__name__)


@dataclass
class OfflineRows:
    """A view's offline rows as push frames of at most the asked number of rows each."""

    total: int | None  # known before reading, unless the offline store streams its answer
    frames: Iterator[pd.DataFrame]


@dataclass(frozen=True)
class SourceColumns:
    """A view's columns as its batch source names them, and the push-frame name of each."""

    keys: list[str]
    features: list[str]
    timestamp: str
    created: str | None
    renames: dict[str, str]


def source_columns(view: FeatureView, batch_source: Any) -> SourceColumns:
    back = {name: column for column, name in (batch_source.field_mapping or {}).items()}
    keys = [back.get(e.name, e.name) for e in view.entities]
    features = [back.get(f.name, f.name) for f in view.features]
    timestamp = back.get(batch_source.timestamp_field, batch_source.timestamp_field)
    created = batch_source.created_timestamp_column or None
    created = back.get(created, created) if created else None
    renames = {c: e.name for c, e in zip(keys, view.entities, strict=True)}
    renames.update({c: f.name for c, f in zip(features, view.features, strict=True)})
    renames[timestamp] = view.timestamp_field
    if created and view.created_timestamp_field:
        renames[created] = view.created_timestamp_field
    return SourceColumns(keys, features, timestamp, created, renames)


def incremental_start(feature_view: Any, now: datetime) -> datetime:
    """Where an incremental run of this Feast view starts (Feast's rule, see the module's docstring)."""
    ended = feature_view.most_recent_end_time
    if ended is not None:
        return aware(ended)
    ttl = feature_view.ttl
    if ttl is None:
        raise ConfigError(f"view {feature_view.name!r} was never materialized and has no ttl: "
                          "run `materialize START END` once, or give it a ttl")
    return now - (ttl if ttl > timedelta(0) else timedelta(weeks=52))


def aware(moment: datetime) -> datetime:
    """A naive time is UTC, as everywhere in Feast."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sorted_by_entity(table: Any, columns: SourceColumns) -> Any:
    """The table with each entity's rows together, oldest first (stable: a full tie keeps the source's order;
    a missing created time is the oldest)."""
    names = [*columns.keys, columns.timestamp]
    if columns.created and columns.created in table.column_names:
        names.append(columns.created)
    return table.sort_by([(name, "ascending", "at_start") for name in names])  # (pyarrow 25 and later)


def _frames(tables: Iterable[Any], columns: SourceColumns, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for table in tables:
        for batch in table.to_batches(max_chunksize=chunk_rows):
            if batch.num_rows:
                yield batch.to_pandas().rename(columns=columns.renames)


class FeastOffline:
    """One Feast repo's registry and offline store."""

    def __init__(self, store: Any, offline_store: Any) -> None:
        self.store = store
        self.offline_store = offline_store
        config = getattr(store.config, "materialization_config", None)
        self.pull_latest = bool(getattr(config, "pull_latest_features", False))

    @classmethod
    def open(cls, repo: str | Path) -> FeastOffline:
        def read(store: Any) -> FeastOffline:
            from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

            return cls(store, get_offline_store_from_config(store.config.offline_store))

        return with_feature_store(Path(repo), "materialize", read)

    @property
    def project(self) -> str:
        return str(self.store.project)

    def _feature_views(self) -> dict[str, Any]:
        """The repo's plain and stream feature views, read from the registry now (not from a cache)."""
        views = [*self.store.list_stream_feature_views(allow_cache=False),
                 *self.store.list_feature_views(allow_cache=False)]
        return {fv.name: fv for fv in views}

    def select(self, views: list[FeatureView], names: list[str] | None) -> list[FeatureView]:
        """Of the views the daemon consumes from this repo, those to materialize: the named ones, or every
        online, enabled one. A view whose offline rows Feast would transform first is refused."""
        known = self._feature_views()
        ours = [v for v in views if v.name in known and v.project == self.project]
        if names:
            unknown = sorted(set(names) - {v.name for v in ours})
            if unknown:
                raise ConfigError(f"--views {unknown}: not views this daemon writes (a KafkaSource in AvroFormat "
                                  f"in this repo); these are {[v.name for v in ours]}")
            chosen = [v for v in ours if v.name in names]
        else:
            chosen = []
            for view in ours:
                fv = known[view.name]
                if fv.online and getattr(fv, "enabled", True):
                    chosen.append(view)
                else:
                    log.info("view %s is not online or not enabled: not materialized", view.name)
        for view in chosen:
            fv = known[view.name]
            if not fv.online:
                raise ConfigError(f"view {view.name!r} is not online: Feast does not materialize it either")
            if getattr(fv, "aggregations", None) or getattr(fv, "feature_transformation", None) is not None:
                raise ConfigError(f"view {view.name!r} computes its features from its source (aggregations or a "
                                  "transformation); materialize copies source rows and cannot run them")
        return chosen

    def incremental_start(self, name: str, now: datetime) -> datetime:
        return incremental_start(self._feature_views()[name], now)

    def read(self, view: FeatureView, start: datetime, end: datetime, chunk_rows: int) -> OfflineRows:
        """The view's batch-source rows with event times in [start, end] (both included, as Feast's file
        store reads them), each entity's rows together unless the store streams its answer."""
        fv = self._feature_views()[view.name]
        columns = source_columns(view, fv.batch_source)
        pull = (self.offline_store.pull_latest_from_table_or_query if self.pull_latest
                else self.offline_store.pull_all_from_table_or_query)
        job = pull(config=self.store.config, data_source=fv.batch_source, join_key_columns=columns.keys,
                   feature_name_columns=columns.features, timestamp_field=columns.timestamp,
                   created_timestamp_column=columns.created, start_date=aware(start), end_date=aware(end))
        streamed = getattr(job, "to_arrow_batches", None)
        if callable(streamed):  # Snowflake's jobs hand their answer over in parts
            return OfflineRows(None, _frames(streamed(), columns, chunk_rows))
        table = job.to_arrow()
        if not self.pull_latest:
            table = _sorted_by_entity(table, columns)
        return OfflineRows(table.num_rows, _frames([table], columns, chunk_rows))

    def record(self, name: str, start: datetime, end: datetime) -> None:
        """Record [start, end] as materialized for the view, in the registry, as Feast does."""
        fv = self._feature_views()[name]
        self.store.registry.apply_materialization(fv, self.project, aware(start), aware(end), commit=True)
