"""Decoding against a real schema registry (Apicurio, Confluent-compatible API) and a real Kafka.

Records are produced by confluent-kafka's own AvroSerializer (Confluent wire format, schemas registered
by the producer), consumed from Kafka, and assembled into feature-view rows.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.core.errors import ConfigError, RegistryUnavailable, UnknownSchemaError
from consumer.core.policy import Limits
from consumer.decode.assemble import assemble
from consumer.decode.decoder import topic_decoders
from consumer.decode.registry import RegistryClient, check_registry_subjects
from tests.helpers import DRIVER_SCHEMA, NOW_MS, T0_MICROS, driver_record, driver_view, plain_schema

pytestmark = pytest.mark.integration


def produce(bootstrap: str, registry_url: str, topic: str, schema: dict[str, Any],
            records: list[dict[str, Any]]) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": True})
    producer = Producer({"bootstrap.servers": bootstrap})
    for record in records:
        value = serializer(record, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


def consume_all(bootstrap: str, topic: str, expected: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, 1.0) if m.error() is None)
    finally:
        consumer.close()
    assert len(out) == expected
    return out


def test_registry_framed_records_decode_and_evolve_without_a_restart(stack, registry_url, make_topic) -> None:
    topic = make_topic(partitions=2)
    v1 = copy.deepcopy(DRIVER_SCHEMA)
    v1["fields"] = [dict(f, type="int") if f["name"] == "avg_daily_trips" else f for f in v1["fields"]]
    v2 = copy.deepcopy(v1)  # int promoted to long, and a new field with a default
    v2["fields"] = [dict(f, type="long") if f["name"] == "avg_daily_trips" else f for f in v2["fields"]]
    v2["fields"].append({"name": "region", "type": "string", "default": "eu"})

    view = driver_view(topics=[topic], schema={"registry": True})
    registry = RegistryClient(registry_url)
    decoders = topic_decoders([view], registry)  # built once: the "running" consumer

    produce(stack.bootstrap_servers, registry_url, topic, v1,
            [driver_record(driver_id=1, trips=3, ts=T0_MICROS)])
    first = assemble(consume_all(stack.bootstrap_servers, topic, 1), decoders, Limits(), NOW_MS)
    assert first.rejected == []
    produce(stack.bootstrap_servers, registry_url, topic, v2,
            [dict(driver_record(driver_id=2, trips=2**40, ts=T0_MICROS + 1000), region="us")])
    batch = assemble(consume_all(stack.bootstrap_servers, topic, 2), decoders, Limits(), NOW_MS)

    assert [str(r.error) for r in batch.rejected] == []
    [vb] = batch.views
    assert dict(zip(vb.frame["driver_id"], vb.frame["avg_daily_trips"], strict=True)) == {1: 3, 2: 2**40}
    schema_ids = {bytes(m.value()[1:5]) for m in consume_all(stack.bootstrap_servers, topic, 2)}
    assert len(schema_ids) == 2  # two writer schemas, both resolved by the same decoder


def test_plain_bodies_decode_with_the_configured_schema(stack, make_topic) -> None:
    import io

    import fastavro

    topic = make_topic()
    view = driver_view(topics=[topic])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(plain_schema(DRIVER_SCHEMA)), driver_record(driver_id=9))
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    producer.produce(topic, value=buf.getvalue())
    assert producer.flush(30) == 0
    batch = assemble(consume_all(stack.bootstrap_servers, topic, 1), topic_decoders([view], None), Limits(), NOW_MS)
    assert batch.views[0].frame["driver_id"].tolist() == [9]


def test_an_unknown_schema_id_is_a_permanent_error(registry_url) -> None:
    with pytest.raises(UnknownSchemaError, match="schema id 987654"):
        RegistryClient(registry_url).schema_text(987654)


def test_an_unreachable_registry_is_transient() -> None:
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        RegistryClient("http://127.0.0.1:9").schema_text(1)


def test_start_up_checks_the_latest_subject_schema_against_the_view(stack, registry_url, make_topic) -> None:
    topic = make_topic()
    broken = copy.deepcopy(DRIVER_SCHEMA)
    broken["fields"] = [f for f in broken["fields"] if f["name"] != "conv_rate"]
    client = SchemaRegistryClient({"url": registry_url})
    from confluent_kafka.schema_registry import Schema

    client.register_schema(f"{topic}-value", Schema(json.dumps(broken), "AVRO"))
    view = driver_view(topics=[topic], schema={"registry": True})
    with pytest.raises(ConfigError, match=rf"feature 'conv_rate' is missing.*subject '{topic}-value'"):
        check_registry_subjects([view], RegistryClient(registry_url))
