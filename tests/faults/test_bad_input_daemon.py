"""The bad-input corpus through the running daemon, and secrets kept out of everything it prints."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from tests.daemon import Daemon, Deployment
from tests.unit.test_bad_input import CORPUS, SCHEMA, VIEW_SPEC

pytestmark = [pytest.mark.fault, pytest.mark.integration]


def test_the_corpus_through_the_daemon_every_record_written_or_dead_lettered(
    make_deployment: Callable[..., Deployment], registry_url: str, daemons: list[Daemon]
) -> None:
    # One partition: a record's original offset is its place in the corpus.
    deployment = make_deployment("corpus", registry_url=registry_url, view=VIEW_SPEC, partitions=1,
                                 extra={"limits": {"max_value_bytes": 64, "max_list_items": 8}})
    # The corpus is framed for schema id 1 (its unit test's fake registry): re-frame with the real id. (The
    # Int32 case's bytes hold a 64-bit value under the int schema, as a faulty producer would send them.)
    client = SchemaRegistryClient({"url": registry_url})
    schema_id = client.register_schema(f"{deployment.topic}-value", Schema(json.dumps(SCHEMA), "AVRO"))
    producer = Producer({"bootstrap.servers": deployment.endpoints.bootstrap_servers})
    for case, value, _ in CORPUS:
        if value is not None and value[:5] == b"\x00\x00\x00\x00\x01":
            value = b"\x00" + schema_id.to_bytes(4, "big") + value[5:]
        producer.produce(deployment.topic, key=case.encode(), value=value)
    assert producer.flush(30) == 0

    secret = "hunter2-never-printed"
    daemon = Daemon(deployment, env={"FEATURE_CONSUMER_KAFKA__SASL_PASSWORD": secret,
                                     "FEATURE_CONSUMER_CASSANDRA__PASSWORD": secret})
    daemons.append(daemon)
    deployment.wait_caught_up(daemons=daemons)
    expected = sorted((i, outcome) for i, (_, _, outcome) in enumerate(CORPUS) if outcome != "written")
    letters = deployment.dead_letters(expected=len(expected))
    got = sorted({(int(dict(m.headers())["x-dead-letter-original-offset"]),
                   dict(m.headers())["x-dead-letter-error-class"].decode()) for m in letters})
    assert got == expected  # every bad record, with its documented error class; the rest written
    assert daemon.terminate() == 0
    assert secret not in daemon.log()
