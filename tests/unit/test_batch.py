"""Micro-batch assembly: coalescing, offset accounting, the push frame, and every mapping error."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.errors import DecodeError, FramingError, MappingError
from consumer.core.guard import NULL_MS
from consumer.core.policy import Limits
from consumer.decode.assemble import Batch, assemble
from consumer.decode.coalesce import newest_per_key
from consumer.decode.decoder import TopicDecoder
from consumer.decode.schema import load_writer_schema
from consumer.feast.frame import encode_frame
from tests.helpers import (
    DRIVER_SCHEMA,
    NOW_MS,
    T0_MICROS,
    FakeMessage,
    avro_body,
    driver_body,
    driver_record,
    driver_view,
    plain_schema,
)

TOPIC = "driver_stats"


def decoders_for(schema: dict[str, Any] = DRIVER_SCHEMA, **view_overrides: Any) -> dict[str, TopicDecoder]:
    view = driver_view(**view_overrides)
    return {TOPIC: TopicDecoder(TOPIC, [view], file_schema=load_writer_schema(json.dumps(schema)))}


def run(bodies: list[bytes | None], decoders: dict[str, TopicDecoder] | None = None,
        limits: Limits | None = None, partition: int = 0) -> Batch:
    messages = [FakeMessage(TOPIC, partition, 100 + i, b) for i, b in enumerate(bodies)]
    return assemble(messages, decoders or decoders_for(), limits or Limits(), NOW_MS)


def test_newest_record_per_entity_wins_by_event_then_created_then_offset() -> None:
    s = 1_000_000
    batch = run([
        driver_body(driver_id=1, ts=T0_MICROS + 1 * s, conv=0.1),
        driver_body(driver_id=1, ts=T0_MICROS + 3 * s, created=T0_MICROS, conv=0.2),
        driver_body(driver_id=2, ts=T0_MICROS, conv=0.3),
        driver_body(driver_id=1, ts=T0_MICROS + 3 * s, created=T0_MICROS + s, conv=0.4),  # newer created
        driver_body(driver_id=1, ts=T0_MICROS + 2 * s, created=T0_MICROS + 9 * s, conv=0.5),  # older event
        driver_body(driver_id=2, ts=T0_MICROS, conv=0.6),  # full tie: the later message wins
    ])
    [vb] = batch.views
    frame = vb.frame.set_index("driver_id")
    assert frame.loc[1, "conv_rate"] == pytest.approx(0.4)
    assert frame.loc[2, "conv_rate"] == pytest.approx(0.6)
    assert sorted(batch.source(p).offset for p in vb.positions) == [103, 105]
    assert (vb.records, vb.superseded) == (6, 4)
    assert batch.next_offsets == {(TOPIC, 0): 106}


def test_the_push_frame_has_feast_shape_and_dtypes() -> None:
    [vb] = run([driver_body(driver_id=7, conv=0.5, trips=3)]).views
    assert list(vb.frame.columns) == [
        "driver_id", "event_timestamp", "created", "conv_rate", "acc_rate", "avg_daily_trips",
    ]
    assert str(vb.frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert vb.frame["conv_rate"].dtype == np.float32
    assert vb.frame["avg_daily_trips"].dtype == np.int64
    assert vb.frame.loc[0, "event_timestamp"] == pd.Timestamp(T0_MICROS, unit="us", tz="UTC")
    assert vb.rows.event_ms.tolist() == [T0_MICROS // 1000]
    assert vb.rows.values["avg_daily_trips"] == [b"\x20\x03"]


def test_timestamps_keep_the_store_millisecond_resolution() -> None:
    """Events in the same millisecond are a tie (Cassandra's timestamp type holds milliseconds)."""
    batch = run([
        driver_body(driver_id=1, ts=T0_MICROS + 900, conv=0.1),
        driver_body(driver_id=1, ts=T0_MICROS + 100, conv=0.2),  # same ms, later message: wins
    ])
    [vb] = batch.views
    assert vb.frame.loc[0, "conv_rate"] == pytest.approx(0.2)
    assert vb.rows.event_ms.tolist() == [T0_MICROS // 1000]


def test_every_offset_is_accounted_for_including_rejected_records() -> None:
    batch = run([driver_body(driver_id=1), b"\x05junk", None, driver_body(driver_id=2)])
    assert batch.next_offsets == {(TOPIC, 0): 104}
    assert [r.error.source.offset for r in batch.rejected if r.error.source] == [101, 102]
    assert [type(r.error) for r in batch.rejected] == [DecodeError, FramingError]
    assert batch.written_rows == 2


def test_a_topic_without_a_view_is_rejected_not_dropped() -> None:
    messages = [FakeMessage("elsewhere", 3, 9, b"x")]
    batch = assemble(messages, decoders_for(), Limits(), NOW_MS)
    assert [str(r.error) for r in batch.rejected] == ["elsewhere[3]@9: no feature view reads topic 'elsewhere'"]
    assert batch.next_offsets == {("elsewhere", 3): 10}


def nullable(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    for f in out["fields"]:
        if f["name"] in names:
            f["type"] = ["null", f["type"]]
    return out


def test_a_null_entity_key_is_a_mapping_error() -> None:
    schema = nullable(DRIVER_SCHEMA, "driver_id")
    body = avro_body(plain_schema(schema), dict(driver_record(), driver_id=None))
    batch = run([body, avro_body(plain_schema(schema), driver_record(driver_id=5))], decoders_for(schema))
    [rejected] = batch.rejected
    assert isinstance(rejected.error, MappingError)
    assert rejected.error.reason == "join key 'driver_id' is null"
    assert batch.views[0].frame["driver_id"].tolist() == [5]


def test_a_missing_event_timestamp_is_a_mapping_error() -> None:
    schema = nullable(DRIVER_SCHEMA, "event_timestamp")
    body = avro_body(plain_schema(schema), dict(driver_record(), event_timestamp=None))
    [rejected] = run([body], decoders_for(schema)).rejected
    assert rejected.error.reason == "event timestamp 'event_timestamp' is missing"


def test_a_missing_created_timestamp_is_allowed_and_oldest() -> None:
    schema = nullable(DRIVER_SCHEMA, "created")
    bodies = [avro_body(plain_schema(schema), dict(driver_record(conv=0.9), created=c)) for c in (T0_MICROS, None)]
    batch = run(bodies, decoders_for(schema))
    [vb] = batch.views
    assert vb.frame.loc[0, "conv_rate"] == pytest.approx(0.9)
    assert batch.source(vb.positions[0]).offset == 100  # a record with a created timestamp beats one without
    bodies.reverse()
    batch = run(bodies, decoders_for(schema))
    [vb] = batch.views
    assert batch.source(vb.positions[0]).offset == 101
    assert vb.rows.created_ms.tolist() == [T0_MICROS // 1000]


def test_a_null_created_timestamp_is_written_as_null() -> None:
    schema = nullable(DRIVER_SCHEMA, "created")
    body = avro_body(plain_schema(schema), dict(driver_record(), created=None))
    [vb] = run([body], decoders_for(schema)).views
    assert vb.rows.created_ms.tolist() == [NULL_MS]
    assert pd.isna(vb.frame.loc[0, "created"])


def int32_view_schema() -> dict[str, Any]:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "rank", "type": "int"})
    return schema


def test_an_int32_out_of_range_is_a_mapping_error() -> None:
    schema = int32_view_schema()
    features = [{"name": "rank", "dtype": "Int32"}]
    # Avro int and long share one encoding: a long-written value beyond 32 bits arrives in an int field.
    wide = copy.deepcopy(schema)
    wide["fields"][-1]["type"] = "long"
    bad = avro_body(plain_schema(wide), dict(driver_record(driver_id=1), rank=2**40))
    good = avro_body(plain_schema(wide), dict(driver_record(driver_id=2), rank=-5))
    batch = run([bad, good], decoders_for(schema, features=features))
    [rejected] = batch.rejected
    assert rejected.error.reason == f"feature 'rank': {2**40} is outside the Int32 range"
    assert batch.views[0].frame["rank"].tolist() == [-5]


class WideIntDecoder(TopicDecoder):
    """fastavro's compiled reader wraps overlong varints to 64 bits; its pure-Python reader does not."""

    def decode(self, value: bytes | None) -> tuple[list[Any], dict[str, Any]]:
        plans, record = super().decode(value)
        return plans, dict(record, avg_daily_trips=2**70) if record["driver_id"] == 1 else record


def test_an_int64_beyond_64_bits_is_a_mapping_error() -> None:
    view = driver_view()
    decoder = WideIntDecoder(TOPIC, [view], file_schema=load_writer_schema(json.dumps(DRIVER_SCHEMA)))
    batch = run([driver_body(driver_id=1), driver_body(driver_id=2)], {TOPIC: decoder})
    assert [r.error.reason for r in batch.rejected] == [f"feature 'avg_daily_trips': {2**70} does not fit in 64 bits"]
    assert batch.views[0].frame["driver_id"].tolist() == [2]


def test_a_string_over_the_limit_is_a_mapping_error() -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "label", "type": "string"})
    view = {"features": [{"name": "label", "dtype": "String"}]}
    bodies = [avro_body(plain_schema(schema), dict(driver_record(driver_id=i), label=text))
              for i, text in enumerate(["ok", "x" * 11, "é" * 6])]
    batch = run(bodies, decoders_for(schema, **view), Limits(max_value_bytes=10))
    reasons = sorted(r.error.reason for r in batch.rejected)
    assert reasons == ["feature 'label' is 11 bytes, over the limit of 10",
                       "feature 'label' is 12 bytes, over the limit of 10"]
    assert batch.views[0].frame["label"].tolist() == ["ok"]


def test_avro_bytes_that_are_not_utf8_for_a_string_feature_are_a_mapping_error() -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "label", "type": "bytes"})  # promoted to a String feature
    bodies = [avro_body(plain_schema(schema), dict(driver_record(driver_id=i), label=raw))
              for i, raw in enumerate([b"ok", b"\xff\xfe"])]
    batch = run(bodies, decoders_for(schema, features=[{"name": "label", "dtype": "String"}]))
    [rejected] = batch.rejected
    assert (rejected.error.error_class, rejected.error.reason) == (
        "MappingError", "feature 'label': bytes are not valid UTF-8")
    assert rejected.message.offset() == 101 and rejected.error.source.offset == 101
    assert batch.views[0].frame["label"].tolist() == ["ok"]


def list_schema(item: Any) -> dict[str, Any]:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "xs", "type": {"type": "array", "items": item}})
    return schema


def test_a_list_over_the_limit_is_a_mapping_error() -> None:
    schema = list_schema("long")
    bodies = [avro_body(plain_schema(schema), dict(driver_record(driver_id=i), xs=list(range(n))))
              for i, n in enumerate([3, 4])]
    batch = run(bodies, decoders_for(schema, features=[{"name": "xs", "dtype": "Array(Int64)"}]),
                Limits(max_list_items=3))
    assert [r.error.reason for r in batch.rejected] == ["feature 'xs' has 4 items, over the limit of 3"]


def test_a_null_item_in_a_numeric_list_is_a_mapping_error() -> None:
    schema = list_schema(["null", "double"])
    body = avro_body(plain_schema(schema), dict(driver_record(), xs=[1.0, None]))
    batch = run([body], decoders_for(schema, features=[{"name": "xs", "dtype": "Array(Float64)"}]))
    assert "has a null item" in batch.rejected[0].error.reason


def test_a_null_item_in_a_string_list_takes_feasts_default() -> None:
    schema = list_schema(["null", "string"])
    body = avro_body(plain_schema(schema), dict(driver_record(), xs=["a", None]))
    [vb] = run([body], decoders_for(schema, features=[{"name": "xs", "dtype": "Array(String)"}])).views
    assert vb.rows.values["xs"] == [bytes.fromhex("62050a01610a00")]  # ["a", ""], as Feast writes it


@pytest.mark.parametrize(("ts", "reason"), [
    (-1_000_000, "before 1970"),
    ((NOW_MS + 25 * 3600 * 1000) * 1000, "ahead of the consumer clock"),
])
def test_event_timestamps_outside_the_accepted_window_are_mapping_errors(ts: int, reason: str) -> None:
    batch = run([driver_body(ts=ts), driver_body(driver_id=2)])
    [rejected] = batch.rejected
    assert reason in rejected.error.reason
    assert batch.written_rows == 1


def test_the_future_bound_can_be_lifted() -> None:
    far = (NOW_MS + 25 * 3600 * 1000) * 1000
    assert run([driver_body(ts=far)], limits=Limits(max_future_ms=None)).written_rows == 1


def test_an_empty_bytes_key_is_a_mapping_error() -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"][0] = {"name": "driver_id", "type": "bytes"}
    bodies = [avro_body(plain_schema(schema), dict(driver_record(), driver_id=k)) for k in (b"", b"k")]
    batch = run(bodies, decoders_for(schema, entities=[{"name": "driver_id", "value_type": "BYTES"}]))
    assert [r.error.reason for r in batch.rejected] == ["join key 'driver_id' is empty bytes, which Feast cannot serve"]


def test_composite_keys_coalesce_per_full_key() -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].insert(1, {"name": "city", "type": "string"})
    entities = [{"name": "driver_id", "value_type": "INT64"}, {"name": "city", "value_type": "STRING"}]
    recs = [dict(driver_record(driver_id=1, conv=c), city=city) for c, city in [(0.1, "a"), (0.2, "b"), (0.3, "a")]]
    batch = run([avro_body(plain_schema(schema), r) for r in recs], decoders_for(schema, entities=entities))
    [vb] = batch.views
    got = sorted(zip(vb.frame["city"], vb.frame["conv_rate"].tolist(), strict=True))
    assert [c for c, _ in got] == ["a", "b"]
    assert [v for _, v in got] == pytest.approx([0.3, 0.2])


def test_timestamp_keys_a_fraction_of_a_second_apart_are_one_entity() -> None:
    # Feast serializes a UnixTimestamp key in whole seconds: both records name the same online row.
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"][0] = {"name": "driver_id", "type": {"type": "long", "logicalType": "timestamp-micros"}}
    recs = [driver_record(driver_id=T0_MICROS + 100_000, conv=0.1),
            driver_record(driver_id=T0_MICROS + 600_000, conv=0.2, ts=T0_MICROS + 1_000_000)]
    batch = run([avro_body(plain_schema(schema), r) for r in recs],
                decoders_for(schema, entities=[{"name": "driver_id", "value_type": "UNIX_TIMESTAMP"}]))
    [vb] = batch.views
    assert (len(vb.frame), vb.superseded) == (1, 1)
    assert vb.frame["conv_rate"].tolist() == pytest.approx([0.2])
    assert len(set(vb.rows.entity_keys)) == 1


# --------------------------------------------------------------------------- properties


def brute_force_winners(keys: list[int], events: list[int], created: list[int]) -> set[int]:
    best: dict[int, int] = {}
    for i, k in enumerate(keys):
        j = best.get(k)
        if j is None or (events[i], created[i], i) >= (events[j], created[j], j):
            best[k] = i
    return set(best.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(-1, 3)), max_size=40))
def test_newest_per_key_matches_a_brute_force_oracle(rows: list[tuple[int, int, int]]) -> None:
    keys = [r[0] for r in rows]
    events = [r[1] for r in rows]
    created = [NULL_MS if r[2] < 0 else r[2] for r in rows]
    winners = newest_per_key(np.array(keys, dtype=np.int64), np.array(events, dtype=np.int64),
                             np.array(created, dtype=np.int64), np.arange(len(rows), dtype=np.int64))
    assert set(winners.tolist()) == brute_force_winners(keys, events, created)
    assert winners.tolist() == sorted(winners.tolist())


record_strategy = st.tuples(st.integers(1, 6), st.integers(0, 4), st.integers(0, 2), st.booleans())


@settings(max_examples=100, deadline=None)
@given(st.lists(record_strategy, min_size=1, max_size=30))
def test_assembly_accounts_for_every_message(records: list[tuple[int, int, int, bool]]) -> None:
    bodies: list[bytes | None] = []
    for driver, ts, created, bad in records:
        bodies.append(b"\x07" if bad else driver_body(driver_id=driver, ts=T0_MICROS + ts * 1000,
                                                      created=T0_MICROS + created * 1000, conv=ts / 10))
    batch = run(bodies)
    good = [r for r in records if not r[3]]
    assert len(batch.rejected) == sum(r[3] for r in records)
    rows = sum(vb.records for vb in batch.views)
    assert rows == len(good)
    assert batch.written_rows == len({r[0] for r in good})
    assert batch.next_offsets == {(TOPIC, 0): 100 + len(records)}
    expected = {}
    for i, (driver, ts, created, _) in enumerate(good):
        if driver not in expected or (ts, created, i) >= expected[driver][:3]:
            expected[driver] = (ts, created, i, ts / 10)
    for vb in batch.views:
        got = dict(zip(vb.frame["driver_id"].tolist(), vb.frame["conv_rate"].tolist(), strict=True))
        assert got == pytest.approx({d: v[3] for d, v in expected.items()})


# The writer's rows come from the mapped columns (consumer.feast.frame.Column); the push frame, built only
# when asked for, is what tests/feast_compat proves byte-equal to Feast. Both must give the same rows.
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 3), st.none() | st.integers(0, 3),
                          st.floats(width=32), st.none() | st.integers(-(2**63), 2**63 - 1)),
                min_size=1, max_size=30))
def test_a_batch_encodes_as_its_push_frame_does(
        records: list[tuple[int, int, int | None, float, int | None]]) -> None:
    schema = nullable(DRIVER_SCHEMA, "created", "avg_daily_trips")
    second = 1_000_000
    bodies = [avro_body(plain_schema(schema), dict(driver_record(driver_id=d, ts=T0_MICROS + t * second, conv=v),
                                                   created=None if c is None else T0_MICROS + c * second,
                                                   avg_daily_trips=trips))
              for d, t, c, v, trips in records]
    messages = [FakeMessage(TOPIC, 0, 10 + i, body) for i, body in enumerate(bodies)]
    [view_batch] = assemble(messages, decoders_for(schema), Limits(), NOW_MS).views
    from_frame = encode_frame(view_batch.view, view_batch.frame)
    assert view_batch.rows.entity_keys == from_frame.entity_keys
    assert view_batch.rows.event_ms.tolist() == from_frame.event_ms.tolist()
    assert view_batch.rows.created_ms.tolist() == from_frame.created_ms.tolist()
    assert view_batch.rows.values == from_frame.values
