"""A stand-in for the part of Feast 0.67 that `consumer/feast_repo.py` reads (Feast is not installed for unit runs).

The shapes follow Feast 0.67's SDK as a registry hands its objects back:
- `KafkaSource` keeps `timestamp_field`, `created_timestamp_column` ("" when not given) and
  `field_mapping` (source column -> feature name) on the source, and topic, bootstrap servers and the
  message format in `kafka_options`; `AvroFormat` carries the schema's JSON as `schema_json`.
- A view's `stream_source` is its source when that is a Kafka, Kinesis or Push source, else None.
- `entity_columns` are `Field`s of the join keys; a `FeatureView`'s `features` are the other fields, while
  a `StreamFeatureView` read from the registry lists its whole schema, join keys included.
- A `Field`'s dtype prints as Feast writes it: `Int64`, `Array(String)`.
- `FeatureStore(repo_path=...).config` has `project`, `online_store` (the Cassandra store's config:
  `type`, `hosts`, `port`, `keyspace`, `username`, `password`, `protocol_version`, `request_timeout`,
  `load_balancing.local_dc`) and `entity_key_serialization_version`.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest


@dataclass(frozen=True)
class FeastType:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Array:
    base_type: FeastType

    def __str__(self) -> str:
        return f"Array({self.base_type})"


Int64, Float32, Float64, String, Bool = (FeastType(n) for n in ("Int64", "Float32", "Float64", "String", "Bool"))


@dataclass
class Field:
    name: str
    dtype: Any


@dataclass
class AvroFormat:
    schema_json: str


@dataclass
class JsonFormat:
    schema_json: str


@dataclass
class KafkaOptions:
    kafka_bootstrap_servers: str
    message_format: Any
    topic: str


class DataSource:
    def __init__(self, name: str, timestamp_field: str = "", created_timestamp_column: str = "",
                 field_mapping: dict[str, str] | None = None) -> None:
        self.name = name
        self.timestamp_field = timestamp_field
        self.created_timestamp_column = created_timestamp_column
        self.field_mapping = field_mapping or {}


class FileSource(DataSource):
    pass


class PushSource(DataSource):
    pass


class KafkaSource(DataSource):
    def __init__(self, *, name: str, timestamp_field: str, message_format: Any, kafka_bootstrap_servers: str = "",
                 topic: str = "", created_timestamp_column: str = "",
                 field_mapping: dict[str, str] | None = None) -> None:
        super().__init__(name, timestamp_field, created_timestamp_column, field_mapping)
        self.kafka_options = KafkaOptions(kafka_bootstrap_servers, message_format, topic)


class FeatureView:
    def __init__(self, *, name: str, join_keys: list[str], schema: list[Field], source: DataSource,
                 ttl: timedelta | None = None) -> None:
        self.name = name
        self.ttl = ttl
        self.stream_source = source if isinstance(source, KafkaSource | PushSource) else None
        self.entity_columns = [f for f in schema if f.name in join_keys]
        self.features = self._features(schema, join_keys)

    @staticmethod
    def _features(schema: list[Field], join_keys: list[str]) -> list[Field]:
        return [f for f in schema if f.name not in join_keys]


class StreamFeatureView(FeatureView):
    @staticmethod
    def _features(schema: list[Field], join_keys: list[str]) -> list[Field]:
        return list(schema)


@dataclass
class LoadBalancing:
    load_balancing_policy: str
    local_dc: str = "datacenter1"


@dataclass
class CassandraOnlineStoreConfig:
    hosts: list[str] | None = None
    port: int | None = None
    keyspace: str = "feast_keyspace"
    username: str | None = None
    password: str | None = None
    protocol_version: int | None = None
    request_timeout: float | None = None
    load_balancing: LoadBalancing | None = None
    type: str = "cassandra"


@dataclass
class SqliteOnlineStoreConfig:
    path: str = "data/online.db"
    type: str = "sqlite"


@dataclass
class RepoConfig:
    project: str
    online_store: Any
    entity_key_serialization_version: int = 3


@dataclass
class Registry:
    config: RepoConfig
    views: list[FeatureView] = field(default_factory=list)


class FeatureStore:
    # What every repo holds: set by `install` (or by a process that imports a package re-exporting this).
    registry: Registry | None = None

    def __init__(self, repo_path: str) -> None:
        assert self.registry is not None, "no stand-in registry installed"
        self.repo_path = repo_path
        self.config = self.registry.config

    def list_stream_feature_views(self) -> list[FeatureView]:
        assert self.registry is not None
        return [v for v in self.registry.views if isinstance(v, StreamFeatureView)]

    def list_feature_views(self) -> list[FeatureView]:
        assert self.registry is not None
        return [v for v in self.registry.views if not isinstance(v, StreamFeatureView)]


MODULES: dict[str, dict[str, Any]] = {
    "feast": {"FeatureStore": FeatureStore, "FeatureView": FeatureView, "Field": Field},
    "feast.data_format": {"AvroFormat": AvroFormat, "JsonFormat": JsonFormat},
    "feast.data_source": {"KafkaSource": KafkaSource, "PushSource": PushSource},
    "feast.stream_feature_view": {"StreamFeatureView": StreamFeatureView},
}


def install(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    """Make `import feast` find this stand-in, with `registry` as what any repo holds."""
    monkeypatch.setattr(FeatureStore, "registry", registry)
    for name, attributes in MODULES.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
