"""`--feast-repo`: what a Feast 0.67 repo's objects become, read through a stand-in of Feast's SDK.

The end-to-end proof with Feast itself is tests/feast_compat/test_feast_serving.py; these pin the mapping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from consumer.config import load_settings
from consumer.core.errors import ConfigError
from consumer.decode.decoder import topic_decoders
from consumer.feast.repo import load_feast_repo
from tests import feast_standin as feast
from tests.helpers import ROOT

STREAM_SCHEMA = {
    "type": "record", "name": "DriverCustomer", "namespace": "repo",
    "fields": [
        {"name": "driver_id", "type": "long"},
        {"name": "customer_id", "type": "string"},
        {"name": "event_timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "created", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "trip_count", "type": "long"},
        {"name": "rating", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
HOURLY_SCHEMA = {
    "type": "record", "name": "DriverHourly", "namespace": "repo",
    "fields": [
        {"name": "driver_id", "type": "long"},
        {"name": "event_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "conv_rate", "type": "float"},
    ],
}
UNUSED = feast.FileSource("unused", timestamp_field="event_timestamp")


def stream_view() -> feast.StreamFeatureView:
    source = feast.KafkaSource(
        name="driver_customer_stream", timestamp_field="event_timestamp", created_timestamp_column="created",
        message_format=feast.AvroFormat(json.dumps(STREAM_SCHEMA)), kafka_bootstrap_servers="broker:9092",
        topic="driver_customer", field_mapping={"trip_count": "trips"})
    return feast.StreamFeatureView(
        name="driver_customer_stats", join_keys=["driver_id", "customer_id"], source=source,
        ttl=timedelta(days=1), schema=[
            feast.Field("driver_id", feast.Int64), feast.Field("customer_id", feast.String),
            feast.Field("trips", feast.Int64), feast.Field("rating", feast.Float64),
            feast.Field("tags", feast.Array(feast.String))])


def kafka_view(name: str = "driver_hourly", message_format: Any = None) -> feast.FeatureView:
    source = feast.KafkaSource(
        name=f"{name}_stream", timestamp_field="event_timestamp", kafka_bootstrap_servers="broker:9092",
        topic=f"{name}_topic", message_format=message_format or feast.AvroFormat(json.dumps(HOURLY_SCHEMA)))
    return feast.FeatureView(name=name, join_keys=["driver_id"], source=source, ttl=timedelta(hours=2),
                             schema=[feast.Field("driver_id", feast.Int64), feast.Field("conv_rate", feast.Float32)])


def batch_view(name: str, source: feast.DataSource) -> feast.FeatureView:
    return feast.FeatureView(name=name, join_keys=["driver_id"], source=source,
                             schema=[feast.Field("driver_id", feast.Int64), feast.Field("conv_rate", feast.Float32)])


def cassandra(**settings: Any) -> feast.CassandraOnlineStoreConfig:
    return feast.CassandraOnlineStoreConfig(**{"hosts": ["cassandra-1"], "keyspace": "online", **settings})


def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, views: list[feast.FeatureView],
         online_store: Any = None, key_version: int = 3) -> Path:
    """A repo directory whose registry (the stand-in's) holds `views`."""
    path = tmp_path / "feature_repo"
    path.mkdir()
    (path / "feature_store.yaml").write_text("project: rides\n")  # Feast's own parsing is the stand-in's
    config = feast.RepoConfig("rides", online_store or cassandra(), key_version)
    feast.install(monkeypatch, feast.Registry(config, views))
    return path


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_repo_views_equal_the_same_views_written_in_our_config(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from_repo = load_settings(None, feast_repo=repo(tmp_path, monkeypatch, [stream_view(), kafka_view()]))
    from_config = load_settings(config_file(tmp_path, f"""
        views:
          - name: driver_customer_stats
            project: rides
            topics: [driver_customer]
            entities:
              - {{name: driver_id, value_type: INT64}}
              - {{name: customer_id, value_type: STRING}}
            features:
              - {{name: trips, dtype: Int64}}
              - {{name: rating, dtype: Float64}}
              - {{name: tags, dtype: Array(String)}}
            timestamp_field: event_timestamp
            created_timestamp_field: created
            field_mapping: {{trip_count: trips}}
            schema: {{avro: '{json.dumps(STREAM_SCHEMA)}'}}
          - name: driver_hourly
            project: rides
            topics: [driver_hourly_topic]
            entities: [{{name: driver_id, value_type: INT64}}]
            features: [{{name: conv_rate, dtype: Float32}}]
            timestamp_field: event_timestamp
            schema: {{avro: '{json.dumps(HOURLY_SCHEMA)}'}}
        """))
    # Same objects, so the same validation, tables, decoding, guard and encodings from here on.
    assert from_repo.views == from_config.views
    assert [v.table for v in from_repo.views] == ["rides_driver_customer_stats", "rides_driver_hourly"]


def test_the_field_mapping_reads_a_feature_from_its_source_field(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    views = load_feast_repo(repo(tmp_path, monkeypatch, [stream_view()])).views
    decoder = topic_decoders(views, None)["driver_customer"]
    assert decoder.file_schema is not None
    [plan] = decoder.plans(decoder.file_schema)
    assert {p.column: p.field for p in plan.features}["trips"] == "trip_count"


def test_views_not_fed_from_kafka_are_skipped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    views = [kafka_view(), batch_view("from_files", UNUSED),
             batch_view("pushed", feast.PushSource("push", timestamp_field="event_timestamp"))]
    loaded = load_feast_repo(repo(tmp_path, monkeypatch, views))
    assert [v.name for v in loaded.views] == ["driver_hourly"]
    assert loaded.skipped == ["from_files: no KafkaSource", "pushed: no KafkaSource"]


def test_a_repo_without_a_kafka_view_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no feature view with a KafkaSource in AvroFormat"):
        load_feast_repo(repo(tmp_path, monkeypatch, [batch_view("from_files", UNUSED)]))


def test_a_kafka_source_in_another_format_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    views = [kafka_view(), kafka_view("json_fed", feast.JsonFormat('{"type": "struct"}'))]
    with pytest.raises(ConfigError, match="view 'json_fed': its KafkaSource sends JsonFormat; only AvroFormat"):
        load_feast_repo(repo(tmp_path, monkeypatch, views))


def test_an_online_store_other_than_cassandra_is_a_clear_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = repo(tmp_path, monkeypatch, [kafka_view()], online_store=feast.SqliteOnlineStoreConfig())
    with pytest.raises(ConfigError, match="the repo's online store is 'sqlite', not cassandra"):
        load_settings(None, feast_repo=path)


def test_the_online_store_and_brokers_become_defaults_the_config_file_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = cassandra(port=9142, username="feast", password="s3cret", protocol_version=5, request_timeout=3.5,
                      load_balancing=feast.LoadBalancing("DCAwareRoundRobinPolicy", local_dc="eu-west"))
    path = repo(tmp_path, monkeypatch, [kafka_view()], online_store=store)
    settings = load_settings(config_file(tmp_path, "cassandra: {keyspace: overridden}\n"), feast_repo=path)
    c = settings.cassandra
    assert (c.hosts, c.port, c.username, c.protocol_version, c.request_timeout_s, c.local_dc) == \
        (["cassandra-1"], 9142, "feast", 5, 3.5, "eu-west")
    assert c.password is not None and c.password.get_secret_value() == "s3cret"
    assert c.keyspace == "overridden"
    assert settings.kafka.bootstrap_servers == "broker:9092"


def test_the_repo_entity_key_serialization_version_is_taken(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # 2, not Feast's default 3: a repo still on the older key encoding must get keys in that encoding.
    views = load_feast_repo(repo(tmp_path, monkeypatch, [stream_view(), kafka_view()], key_version=2)).views
    assert [v.entity_key_serialization_version for v in views] == [2, 2]


# Feast's `feast.metrics` does this when imported: it points prometheus-client's multiprocess mode at a
# temporary directory of its own (unless one is set), then imports prometheus-client.
FEAST_PACKAGE_INIT = '''
import os, tempfile
METRICS_DIR = tempfile.mkdtemp(prefix="feast_metrics_")
os.environ.setdefault("PROMETHEUS_MULTIPROCESS_DIR", METRICS_DIR)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.environ["PROMETHEUS_MULTIPROCESS_DIR"])
import prometheus_client
from tests.feast_standin import FeatureStore, FeatureView, Field
'''
PROBE = '''
import json, os, sys
from tests import feast_standin as feast
from tests.unit.test_feast_repo import cassandra, kafka_view
# The daemon's order: nothing has imported prometheus-client before the repo is read.
assert "prometheus_client" not in sys.modules
feast.FeatureStore.registry = feast.Registry(feast.RepoConfig("rides", cassandra()), [kafka_view()])
from consumer.feast.repo import load_feast_repo
load_feast_repo(sys.argv[1])
from prometheus_client import CollectorRegistry, Counter
Counter("probe", "a metric of ours, made after reading the repo", registry=CollectorRegistry()).inc()
names = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
print(json.dumps({"env": {n: os.environ.get(n) for n in names},
                  "files in Feast's directory": os.listdir(sys.modules["feast"].METRICS_DIR)}))
'''


def test_reading_a_repo_leaves_our_metrics_and_environment_as_they_were(tmp_path: Path) -> None:
    package = tmp_path / "site" / "feast"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FEAST_PACKAGE_INIT)
    (package / "data_format.py").write_text("from tests.feast_standin import AvroFormat, JsonFormat\n")
    (package / "data_source.py").write_text("from tests.feast_standin import KafkaSource, PushSource\n")
    path = tmp_path / "feature_repo"
    path.mkdir()
    (path / "feature_store.yaml").write_text("project: rides\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROMETHEUS_MULTIPROC")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(ROOT)])
    env["TMPDIR"] = str(tmp_path)  # where the stand-in's "Feast" makes its directory
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"env": {"PROMETHEUS_MULTIPROC_DIR": None, "PROMETHEUS_MULTIPROCESS_DIR": None},
                    "files in Feast's directory": []}
