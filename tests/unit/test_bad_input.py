"""The bad-input corpus: every case has one documented outcome (docs/reliability.md), none crashes the
worker, none is lost: each message is either written or rejected with its reason."""

from __future__ import annotations

import copy
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.dtypes import DTYPES
from consumer.core.policy import Limits
from consumer.decode.assemble import Batch, assemble
from consumer.decode.decoder import TopicDecoder
from consumer.feast.values import decode_value
from tests.helpers import (
    DRIVER_SCHEMA,
    NOW_MS,
    FakeMessage,
    avro_body,
    driver_record,
    driver_view,
    driver_view_spec,
    framed,
)
from tests.unit.test_avro import FakeRegistry

TOPIC = "driver_stats"
SCHEMA = copy.deepcopy(DRIVER_SCHEMA)
SCHEMA["fields"] = [
    {"name": "driver_id", "type": "string"},
    *[f for f in SCHEMA["fields"] if f["name"] != "driver_id"],
    {"name": "label", "type": "string"},
    {"name": "scores", "type": {"type": "array", "items": "double"}},
    {"name": "rank", "type": "int"},
]
WIDE = copy.deepcopy(SCHEMA)  # the same bytes layout, with rank written as a long (Avro int = long on the wire)
WIDE["fields"][-1]["type"] = "long"
VIEW_SPEC = driver_view_spec(
    entities=[{"name": "driver_id", "value_type": "STRING"}],
    features=[{"name": "conv_rate", "dtype": "Float32"}, {"name": "acc_rate", "dtype": "Float64"},
              {"name": "label", "dtype": "String"}, {"name": "scores", "dtype": "Array(Float64)"},
              {"name": "rank", "dtype": "Int32"}],
    schema={"registry": True},
)
VIEW = driver_view(**VIEW_SPEC)
LIMITS = Limits(max_value_bytes=64, max_list_items=8)
YEAR_2100_MICROS = 4_102_444_800 * 1_000_000  # far in the future for the tests' clock and for a real one


def record(**changes: Any) -> dict[str, Any]:
    base = dict(driver_record(), driver_id="d-1", label="ok", scores=[1.0], rank=1)
    base.update(changes)
    return base


def body(schema: dict[str, Any] = SCHEMA, **changes: Any) -> bytes:
    from tests.helpers import plain_schema

    return framed(1, avro_body(plain_schema(schema), record(**changes)))


def run(values: list[bytes | None]) -> Batch:
    registry = FakeRegistry({1: SCHEMA})
    decoders = {TOPIC: TopicDecoder(TOPIC, [VIEW], registry=registry)}
    messages = [FakeMessage(TOPIC, 0, i, v) for i, v in enumerate(values)]
    return assemble(messages, decoders, LIMITS, NOW_MS)


CORPUS: list[tuple[str, bytes | None, str]] = [
    # (case, message value, outcome: an error class, or "written")
    ("random bytes", b"\x93\x07\xff\x00garbage", "FramingError"),
    ("wrong magic byte", b"\x01" + body()[1:], "FramingError"),
    ("tombstone (no value)", None, "FramingError"),
    ("unknown schema id", framed(77, b"\x02"), "UnknownSchemaError"),
    ("truncated body", body()[:-4], "DecodeError"),
    ("trailing bytes", body() + b"\x00", "DecodeError"),
    ("string over the limit", body(label="x" * 65), "MappingError"),
    ("array over the limit", body(scores=[0.0] * 9), "MappingError"),
    ("Int32 out of range", body(WIDE, rank=2**31), "MappingError"),
    ("event timestamp far in the future", body(event_timestamp=YEAR_2100_MICROS), "MappingError"),
    ("event timestamp before 1970", body(event_timestamp=-1_000_000), "MappingError"),
    ("NaN float", body(acc_rate=math.nan, conv_rate=math.nan), "written"),
    ("infinities", body(acc_rate=math.inf, conv_rate=-math.inf), "written"),
    ("unicode key", body(driver_id="водитель-🚕"), "written"),
    ("empty string key", body(driver_id=""), "written"),
    ("NaN inside a float list", body(scores=[math.nan, 1.0]), "written"),
]


@pytest.mark.parametrize(("case", "value", "outcome"), CORPUS, ids=[c[0] for c in CORPUS])
def test_each_bad_input_has_its_documented_outcome(case: str, value: bytes | None, outcome: str) -> None:
    batch = run([value])
    assert batch.next_offsets == {(TOPIC, 0): 1}
    if outcome == "written":
        assert batch.rejected == [] and batch.written_rows == 1
    else:
        [rejected] = batch.rejected
        assert rejected.error.error_class == outcome
        assert rejected.error.source is not None and rejected.error.source.offset == 0
        assert rejected.error.reason


def test_nan_is_written_as_null_and_infinities_as_themselves() -> None:
    [vb] = run([body(acc_rate=math.nan, conv_rate=math.inf)]).views
    assert vb.rows.values["acc_rate"] == [b""]  # NaN: the empty Value, as Feast writes it
    assert decode_value(DTYPES["Float32"], vb.rows.values["conv_rate"][0]) == math.inf


def test_a_unicode_key_is_serialized_as_utf8() -> None:
    [vb] = run([body(driver_id="водитель-🚕")]).views
    key = bytes.fromhex(vb.rows.entity_keys[0])
    assert "водитель-🚕".encode() in key
    assert struct.unpack("<I", key[-4 - len("водитель-🚕".encode()):][:4])[0] == len("водитель-🚕".encode())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=64), st.builds(lambda b: framed(1, b), st.binary(max_size=64)),
                          st.just(body())), min_size=1, max_size=20))
def test_arbitrary_bytes_never_crash_the_worker_and_none_is_lost(values: list[bytes]) -> None:
    batch = run(values)  # only typed record errors: anything else would raise here
    written = sum(vb.records for vb in batch.views)
    assert written + len(batch.rejected) == len(values)
    assert batch.next_offsets == {(TOPIC, 0): len(values)}
    for rejected in batch.rejected:
        assert rejected.error.reason and rejected.error.source is not None
