"""Avro decoding: framing, registry caching, resolution of evolved writer schemas, corrupt bodies."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from consumer.core.errors import (
    DecodeError,
    FramingError,
    RegistryUnavailable,
    SchemaMismatchError,
    UnknownSchemaError,
)
from consumer.decode.decoder import TopicDecoder
from consumer.decode.schema import build_plan, load_writer_schema
from tests.helpers import DRIVER_SCHEMA, T0_MICROS, avro_body, driver_record, driver_view, framed, plain_schema


class FakeRegistry:
    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = {k: json.dumps(v) for k, v in schemas.items()}
        self.calls = 0
        self.down = False

    def schema_text(self, schema_id: int) -> str:
        self.calls += 1
        if self.down:
            raise RegistryUnavailable("registry is down")
        if schema_id not in self.schemas:
            raise UnknownSchemaError(f"schema id {schema_id} is not known")
        return self.schemas[schema_id]

    def latest_text(self, subject: str) -> tuple[int, str]:
        schema_id = max(self.schemas)
        return schema_id, self.schemas[schema_id]


def registry_decoder(registry: FakeRegistry) -> TopicDecoder:
    view = driver_view(schema={"registry": True})
    return TopicDecoder("driver_stats", [view], registry=registry)


def with_field(schema: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["fields"] = [dict(f, **changes) if f["name"] == name else f for f in out["fields"]]
    return out


def test_registry_framed_record_decodes_and_the_schema_is_fetched_once() -> None:
    registry = FakeRegistry({7: DRIVER_SCHEMA})
    decoder = registry_decoder(registry)
    body = avro_body(plain_schema(DRIVER_SCHEMA), driver_record(driver_id=42))
    for _ in range(3):
        [plan], record = decoder.decode(framed(7, body))
        assert record["driver_id"] == 42
        assert record["event_timestamp"] == T0_MICROS  # an int, not a datetime
    assert registry.calls == 1
    assert plan.schema_id == 7


@pytest.mark.parametrize(("value", "message"), [
    (b"", "shorter than the 5-byte Confluent header"),
    (b"\x00\x00\x00", "shorter than the 5-byte Confluent header"),
    (b"\x01\x00\x00\x00\x07abc", "magic byte is 1, not 0"),
    (None, "no value"),
])
def test_framing_errors(value: bytes | None, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        registry_decoder(FakeRegistry({7: DRIVER_SCHEMA})).decode(value)


def test_an_unknown_schema_id_is_permanent_and_asked_once() -> None:
    registry = FakeRegistry({7: DRIVER_SCHEMA})
    decoder = registry_decoder(registry)
    for _ in range(2):
        with pytest.raises(UnknownSchemaError):
            decoder.decode(framed(99, b"\x02"))
    assert registry.calls == 1


def test_an_unreachable_registry_is_transient_and_asked_again() -> None:
    registry = FakeRegistry({7: DRIVER_SCHEMA})
    registry.down = True
    decoder = registry_decoder(registry)
    body = avro_body(plain_schema(DRIVER_SCHEMA), driver_record())
    with pytest.raises(RegistryUnavailable):
        decoder.decode(framed(7, body))
    registry.down = False
    [_], record = decoder.decode(framed(7, body))
    assert record["driver_id"] == 1001
    assert registry.calls == 2


def test_a_producer_that_adds_a_field_with_a_default_keeps_working() -> None:
    evolved = copy.deepcopy(DRIVER_SCHEMA)
    evolved["fields"].append({"name": "region", "type": "string", "default": "eu"})
    registry = FakeRegistry({1: DRIVER_SCHEMA, 2: evolved})
    decoder = registry_decoder(registry)
    old = avro_body(plain_schema(DRIVER_SCHEMA), driver_record(driver_id=1))
    new = avro_body(plain_schema(evolved), dict(driver_record(driver_id=2), region="us"))
    assert decoder.decode(framed(1, old))[1]["driver_id"] == 1
    assert decoder.decode(framed(2, new))[1]["driver_id"] == 2


def test_int_promoted_to_long_keeps_working() -> None:
    v1 = with_field(DRIVER_SCHEMA, "avg_daily_trips", type="int")
    v2 = with_field(DRIVER_SCHEMA, "avg_daily_trips", type="long")
    decoder = registry_decoder(FakeRegistry({1: v1, 2: v2}))
    rec1 = decoder.decode(framed(1, avro_body(plain_schema(v1), driver_record(trips=5))))[1]
    rec2 = decoder.decode(framed(2, avro_body(plain_schema(v2), driver_record(trips=2**40))))[1]
    assert (rec1["avg_daily_trips"], rec2["avg_daily_trips"]) == (5, 2**40)


def test_a_writer_schema_that_does_not_resolve_is_a_record_error() -> None:
    broken = with_field(DRIVER_SCHEMA, "conv_rate", type="string")
    decoder = registry_decoder(FakeRegistry({3: broken}))
    with pytest.raises(SchemaMismatchError, match=r"feature 'conv_rate'.*string.*Float32.*schema id 3"):
        decoder.decode(framed(3, b"\x00"))


@pytest.mark.parametrize(("avro_type", "dtype", "ok"), [
    ("int", "Int32", True), ("long", "Int32", False), ("int", "Int64", True), ("long", "Int64", True),
    ("float", "Int64", False), ("long", "Float32", True), ("double", "Float32", False),
    ("double", "Float64", True), ("float", "Float64", True), ("string", "String", True),
    ("bytes", "String", True), ("string", "Bytes", True), ("boolean", "Bool", True), ("int", "Bool", False),
    (["null", "long"], "Int64", True), (["null", "long", "string"], "Int64", False),
    ({"type": "array", "items": "long"}, "Array(Int64)", True), ("long", "Array(Int64)", False),
    ({"type": "array", "items": "string"}, "Array(Int64)", False),
    ({"type": "enum", "name": "Color", "symbols": ["RED"]}, "String", True),
    ({"type": "long", "logicalType": "timestamp-millis"}, "UnixTimestamp", True),
    ({"type": "long", "logicalType": "timestamp-millis"}, "Int64", False),
    ("long", "UnixTimestamp", False),
])
def test_type_compatibility(avro_type: Any, dtype: str, ok: bool) -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "x", "type": avro_type})
    view = driver_view(features=[{"name": "x", "dtype": dtype}])
    writer = load_writer_schema(json.dumps(schema))
    if ok:
        build_plan(view, writer)
    else:
        with pytest.raises(SchemaMismatchError, match="feature 'x'"):
            build_plan(view, writer)


@pytest.mark.parametrize(("logical", "raw", "micros"), [
    ("timestamp-millis", 1_700_000_000_123, 1_700_000_000_123_000),
    ("timestamp-micros", 1_700_000_000_123_456, 1_700_000_000_123_456),
    ("timestamp-nanos", 1_700_000_000_123_456_789, 1_700_000_000_123_456),
])
def test_timestamp_units(logical: str, raw: int, micros: int) -> None:
    schema = with_field(DRIVER_SCHEMA, "event_timestamp", type={"type": "long", "logicalType": logical})
    plan = build_plan(driver_view(schema={"registry": True}), load_writer_schema(json.dumps(schema)))
    # to_micros > 0 multiplies, < 0 divides (nanoseconds), as the decoder applies it.
    factor = plan.event_ts.to_micros
    assert (raw * factor if factor > 0 else raw // -factor) == micros


def test_a_truncated_body_is_a_decode_error() -> None:
    body = avro_body(plain_schema(DRIVER_SCHEMA), driver_record())
    with pytest.raises(DecodeError, match="does not decode with schema id 7"):
        registry_decoder(FakeRegistry({7: DRIVER_SCHEMA})).decode(framed(7, body[:-3]))


def test_trailing_bytes_are_a_decode_error() -> None:
    body = avro_body(plain_schema(DRIVER_SCHEMA), driver_record())
    with pytest.raises(DecodeError, match="2 trailing bytes"):
        registry_decoder(FakeRegistry({7: DRIVER_SCHEMA})).decode(framed(7, body + b"\x00\x00"))


def test_invalid_utf8_in_a_string_is_a_decode_error() -> None:
    schema = copy.deepcopy(DRIVER_SCHEMA)
    schema["fields"].append({"name": "label", "type": "string"})
    body = avro_body(plain_schema(DRIVER_SCHEMA), driver_record()) + b"\x04\xff\xfe"
    with pytest.raises(DecodeError, match="UnicodeDecodeError"):
        registry_decoder(FakeRegistry({7: schema})).decode(framed(7, body))


def test_a_record_name_selects_the_view_on_a_shared_topic() -> None:
    hourly = driver_view(schema={"registry": True}, record_name="feast_demo.DriverHourlyStats")
    daily = driver_view(name="driver_daily", schema={"registry": True}, record_name="feast_demo.Daily")
    other = dict(copy.deepcopy(DRIVER_SCHEMA), name="Other")
    decoder = TopicDecoder("driver_stats", [hourly, daily], registry=FakeRegistry({1: DRIVER_SCHEMA, 2: other}))
    [plan], _ = decoder.decode(framed(1, avro_body(plain_schema(DRIVER_SCHEMA), driver_record())))
    assert plan.view.name == "driver_hourly_stats"
    with pytest.raises(SchemaMismatchError, match="matches no view"):
        decoder.decode(framed(2, avro_body(plain_schema(other), driver_record())))
