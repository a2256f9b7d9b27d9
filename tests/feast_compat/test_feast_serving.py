"""Feast serves what the daemon writes: `feast apply`, then `feature-consumer run --feast-repo`, then
Feast's own `get_online_features` returns exactly the newest values, with their event timestamps.

The repo has a Kafka-fed StreamFeatureView with a composite entity key (int and string join keys) and
int, float, double, string, bool and list features, and a plain Kafka-fed FeatureView. The daemon runs
in the Feast virtualenv (it reads the repo with Feast's SDK), against the local Kafka and Cassandra.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.kafka.offsets import OffsetReader
from stack import feastenv
from tests.topics import create_topics

pytestmark = [pytest.mark.feast, pytest.mark.integration]

STREAM_SCHEMA = {
    "type": "record", "name": "DriverCustomer", "namespace": "serving",
    "fields": [
        {"name": "driver_id", "type": "long"},
        {"name": "customer_id", "type": "string"},
        {"name": "event_timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "created", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "trips", "type": "long"},
        {"name": "rating", "type": "double"},
        {"name": "conv", "type": "float"},
        {"name": "label", "type": "string"},
        {"name": "active", "type": "boolean"},
        {"name": "history", "type": {"type": "array", "items": "long"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
HOURLY_SCHEMA = {
    "type": "record", "name": "DriverHourly", "namespace": "serving",
    "fields": [
        {"name": "driver_id", "type": "long"},
        {"name": "event_timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "conv_rate", "type": "float"},
        {"name": "avg_daily_trips", "type": "long"},
    ],
}

REPO = '''
from datetime import timedelta
import json
from feast import Entity, FeatureView, Field, FileSource, KafkaSource, ValueType
from feast.data_format import AvroFormat
from feast.stream_feature_view import StreamFeatureView
from feast.types import Array, Bool, Float32, Float64, Int64, String

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
unused = FileSource(path="unused.parquet", timestamp_field="event_timestamp")

stream_source = KafkaSource(
    name="driver_customer_stream", kafka_bootstrap_servers={bootstrap!r}, topic={stream_topic!r},
    timestamp_field="event_timestamp", created_timestamp_column="created",
    message_format=AvroFormat({stream_schema!r}), batch_source=unused)
driver_customer = StreamFeatureView(
    name="driver_customer_stats", entities=[driver, customer], ttl=timedelta(days=3650), source=stream_source,
    online=True, schema=[
        Field(name="driver_id", dtype=Int64), Field(name="customer_id", dtype=String),
        Field(name="trips", dtype=Int64), Field(name="rating", dtype=Float64), Field(name="conv", dtype=Float32),
        Field(name="label", dtype=String), Field(name="active", dtype=Bool),
        Field(name="history", dtype=Array(Int64)), Field(name="tags", dtype=Array(String))])

hourly_source = KafkaSource(
    name="driver_hourly_stream", kafka_bootstrap_servers={bootstrap!r}, topic={hourly_topic!r},
    timestamp_field="event_timestamp", message_format=AvroFormat({hourly_schema!r}), batch_source=unused)
driver_hourly = FeatureView(
    name="driver_hourly", entities=[driver], ttl=timedelta(days=3650), source=hourly_source, online=True,
    schema=[Field(name="driver_id", dtype=Int64), Field(name="conv_rate", dtype=Float32),
            Field(name="avg_daily_trips", dtype=Int64)])
'''

QUERY = '''
import json, sys, warnings
warnings.filterwarnings("ignore")
from feast import FeatureStore
store = FeatureStore(sys.argv[1])
request = json.loads(sys.stdin.read())
out = {}
for name, (features, rows) in request.items():
    result = store.get_online_features(features=features, entity_rows=rows).to_dict(include_event_timestamps=True)
    out[name] = result
print(json.dumps(out))
'''


def avro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def wait_caught_up(bootstrap: str, group: str, topics: list[str], proc: subprocess.Popen[bytes], log: Path) -> None:
    with OffsetReader({"bootstrap.servers": bootstrap}, group) as lag:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-4000:]
            rows = lag.read(topics)
            # An empty partition has nothing to commit: no committed offset, and nothing behind.
            if rows and all(r.lag == 0 or (r.committed is None and r.log_end == 0) for r in rows):
                return
            time.sleep(0.5)
    raise AssertionError(f"not caught up: {log.read_text()[-4000:]}")


def test_feast_serves_the_newest_values_the_daemon_wrote(stack, keyspace, tmp_path: Path) -> None:
    python = feastenv.ensure(with_project=True)
    run = uuid.uuid4().hex[:8]
    stream_topic, hourly_topic, group = f"serving_stream_{run}", f"serving_hourly_{run}", f"serving_{run}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    create_topics(admin, [NewTopic(stream_topic, 3, 1), NewTopic(hourly_topic, 2, 1), NewTopic(f"{group}.dlq", 1, 1)])

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": f"serving_{run}", "registry": "registry.db", "provider": "local",
        "online_store": {"type": "cassandra", "hosts": [stack.cql_host], "port": stack.cql_port,
                         "keyspace": keyspace, "protocol_version": 4},
        "entity_key_serialization_version": 3,
    }))
    (repo / "repo.py").write_text(textwrap.dedent(REPO).format(
        bootstrap=stack.bootstrap_servers, stream_topic=stream_topic, hourly_topic=hourly_topic,
        stream_schema=json.dumps(STREAM_SCHEMA), hourly_schema=json.dumps(HOURLY_SCHEMA)))
    feast = python.parent / "feast"
    applied = subprocess.run([str(feast), "apply"], cwd=repo, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr[-3000:]

    # Events, several per entity, shuffled: late events arrive after newer ones.
    rng = random.Random(4)
    base_us = (int(time.time()) - 86_400) * 1_000_000
    stream_events, hourly_events = [], []
    for driver in (1, 2, 3):
        for customer in ("ana", "bó", "x"):
            for _ in range(4):
                ts = base_us + rng.randrange(0, 3600) * 1_000_000
                stream_events.append({
                    "driver_id": driver, "customer_id": customer, "event_timestamp": ts, "created": ts,
                    "trips": rng.randrange(-5, 10**12), "rating": rng.random() * 5, "conv": rng.random(),
                    "label": rng.choice(["a", "β", "long label " * 3]), "active": rng.random() < 0.5,
                    "history": [rng.randrange(0, 100) for _ in range(rng.randrange(0, 4))],
                    "tags": [rng.choice(["x", "y", ""]) for _ in range(rng.randrange(0, 3))],
                })
        for _ in range(5):
            hourly_events.append({"driver_id": driver, "event_timestamp": base_us // 1000 + rng.randrange(0, 10**7),
                                  "conv_rate": rng.random(), "avg_daily_trips": rng.randrange(0, 1000)})
    rng.shuffle(stream_events)
    rng.shuffle(hourly_events)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for record in stream_events:
        producer.produce(stream_topic, key=f"{record['driver_id']}:{record['customer_id']}".encode(),
                         value=avro(STREAM_SCHEMA, record))
    for record in hourly_events:
        producer.produce(hourly_topic, key=str(record["driver_id"]).encode(), value=avro(HOURLY_SCHEMA, record))
    assert producer.flush(30) == 0

    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"group_id": group, "dead_letter_topic": f"{group}.dlq"},
        "cassandra": {"consistency": "ONE", "serial_consistency": "SERIAL"},
        "batch": {"max_records": 200, "max_wait_ms": 100},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }))
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(python), "-m", "consumer.cli", "run", "--feast-repo", str(repo),
                                 "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_caught_up(stack.bootstrap_servers, group, [stream_topic, hourly_topic], proc, log)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0, log.read_text()[-4000:]

    # The oracle: newest event per entity (ties do not occur: event times are distinct per entity).
    newest_stream: dict[tuple[int, str], dict[str, Any]] = {}
    for record in stream_events:
        key = (record["driver_id"], record["customer_id"])
        if key not in newest_stream or record["event_timestamp"] > newest_stream[key]["event_timestamp"]:
            newest_stream[key] = record
    newest_hourly: dict[int, dict[str, Any]] = {}
    for record in hourly_events:
        if record["driver_id"] not in newest_hourly or \
                record["event_timestamp"] > newest_hourly[record["driver_id"]]["event_timestamp"]:
            newest_hourly[record["driver_id"]] = record

    stream_features = [f"driver_customer_stats:{f}" for f in
                       ("trips", "rating", "conv", "label", "active", "history", "tags")]
    stream_rows = [{"driver_id": d, "customer_id": c} for d, c in sorted(newest_stream)]
    hourly_rows = [{"driver_id": d} for d in sorted(newest_hourly)]
    request = {"stream": [stream_features, stream_rows],
               "hourly": [["driver_hourly:conv_rate", "driver_hourly:avg_daily_trips"], hourly_rows]}
    answer = subprocess.run([str(python), "-c", QUERY, str(repo)], input=json.dumps(request),
                            capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr[-3000:]
    served = json.loads(answer.stdout.strip().splitlines()[-1])

    stream = served["stream"]
    for i, (driver, customer) in enumerate(sorted(newest_stream)):
        want = newest_stream[(driver, customer)]
        assert (stream["driver_id"][i], stream["customer_id"][i]) == (driver, customer)
        assert stream["trips"][i] == want["trips"]
        assert stream["rating"][i] == want["rating"]
        assert stream["conv"][i] == pytest.approx(float(np.float32(want["conv"])))
        assert stream["label"][i] == want["label"]
        assert stream["active"][i] == want["active"]
        assert stream["history"][i] == want["history"]
        assert stream["tags"][i] == want["tags"]
        # Feast's to_dict(include_event_timestamps=True) gives the event time in whole seconds.
        assert stream["trips__ts"][i] == want["event_timestamp"] // 1_000_000
    hourly = served["hourly"]
    for i, driver in enumerate(sorted(newest_hourly)):
        want = newest_hourly[driver]
        assert hourly["avg_daily_trips"][i] == want["avg_daily_trips"]
        assert hourly["conv_rate"][i] == pytest.approx(float(np.float32(want["conv_rate"])))
        assert hourly["conv_rate__ts"][i] == want["event_timestamp"] // 1000
