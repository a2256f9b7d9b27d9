"""The smallest honest path through the real services: Avro in Kafka -> consumer group -> Cassandra."""

from __future__ import annotations

import io
import time
import uuid

import fastavro
import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration

SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "smoke",
        "fields": [
            {"name": "driver_id", "type": "long"},
            {"name": "conv_rate", "type": "float"},
            {"name": "event_timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }
)


def test_avro_record_goes_from_kafka_through_a_group_into_cassandra(
    stack, make_topic, keyspace, cql_session
) -> None:
    topic = make_topic(partitions=2)
    record = {"driver_id": 1001, "conv_rate": 0.5, "event_timestamp": 1_700_000_000_000_000}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record)

    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    producer.produce(topic, key=b"1001", value=buf.getvalue())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    try:
        msg = None
        deadline = time.monotonic() + 60
        while msg is None and time.monotonic() < deadline:
            candidate = consumer.poll(1.0)
            if candidate is not None:
                assert candidate.error() is None, candidate.error()
                msg = candidate
        assert msg is not None, "no message consumed within 60s"
        decoded = fastavro.schemaless_reader(io.BytesIO(msg.value()), SCHEMA, None)

        cql_session.execute(
            f"CREATE TABLE {keyspace}.smoke "
            "(driver_id bigint PRIMARY KEY, conv_rate float, event_ts timestamp)"
        )
        cql_session.execute(
            f"INSERT INTO {keyspace}.smoke (driver_id, conv_rate, event_ts) VALUES (%s, %s, %s)",
            (decoded["driver_id"], decoded["conv_rate"], decoded["event_timestamp"]),
        )
        consumer.commit(message=msg, asynchronous=False)
        committed = consumer.committed(consumer.assignment(), timeout=10)
    finally:
        consumer.close()

    row = cql_session.execute(f"SELECT driver_id, conv_rate, event_ts FROM {keyspace}.smoke").one()
    assert row.driver_id == 1001
    assert row.conv_rate == pytest.approx(0.5)
    assert int(row.event_ts.timestamp()) == 1_700_000_000
    assert [tp.offset for tp in committed if tp.partition == msg.partition()] == [msg.offset() + 1]
