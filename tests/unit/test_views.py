"""Feature view definitions: the shipped example loads, and every inconsistency names view and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.config import load_settings
from consumer.core.errors import ConfigError
from consumer.core.views import parse_views
from consumer.decode.decoder import topic_decoders
from tests.helpers import DRIVER_SCHEMA, ROOT, driver_view_spec

spec = driver_view_spec


def test_the_example_config_loads_and_resolves_against_its_schema() -> None:
    settings = load_settings(ROOT / "examples" / "driver_stats.yaml")
    [view] = settings.views
    assert view.table == "feast_demo_driver_hourly_stats"
    assert [f.dtype.name for f in view.features] == ["Float32", "Float32", "Int64"]
    decoders = topic_decoders(settings.views, None)
    assert set(decoders) == {"driver_stats"}


def test_unknown_dtype_names_view_and_feature() -> None:
    bad = spec(features=[{"name": "conv_rate", "dtype": "Float16"}])
    with pytest.raises(ConfigError, match=r"view 'driver_hourly_stats': feature 'conv_rate'\.dtype: unknown dtype"):
        parse_views([bad])


def test_unknown_entity_type_names_the_join_key() -> None:
    bad = spec(entities=[{"name": "driver_id", "value_type": "FLOAT"}])
    with pytest.raises(ConfigError, match=r"join key 'driver_id'\.value_type: unsupported entity value type"):
        parse_views([bad])


def test_list_dtypes_parse_in_feast_and_typing_spellings() -> None:
    view = parse_views([spec(features=[{"name": "a", "dtype": "Array(Int64)"},
                                       {"name": "b", "dtype": "List[String]"}])])[0]
    assert [f.dtype.name for f in view.features] == ["Array(Int64)", "Array(String)"]


def write_schema(tmp_path: Path, fields: list[dict[str, Any]]) -> str:
    schema = dict(DRIVER_SCHEMA, fields=fields)
    path = tmp_path / "s.avsc"
    path.write_text(json.dumps(schema))
    return str(path)


def test_a_feature_missing_from_the_schema_names_view_and_feature(tmp_path: Path) -> None:
    fields = [f for f in DRIVER_SCHEMA["fields"] if f["name"] != "acc_rate"]
    view = parse_views([spec(schema={"file": write_schema(tmp_path, fields)})])
    with pytest.raises(ConfigError, match=r"view 'driver_hourly_stats': feature 'acc_rate' .*missing"):
        topic_decoders(view, None)


def test_an_avro_string_for_an_int64_feature_is_refused(tmp_path: Path) -> None:
    fields = [dict(f, type="string") if f["name"] == "avg_daily_trips" else f for f in DRIVER_SCHEMA["fields"]]
    view = parse_views([spec(schema={"file": write_schema(tmp_path, fields)})])
    with pytest.raises(ConfigError,
                       match=r"view 'driver_hourly_stats': feature 'avg_daily_trips': .*string.*Int64"):
        topic_decoders(view, None)


def test_a_field_mapping_reads_a_feature_from_another_avro_field(tmp_path: Path) -> None:
    fields = [dict(f, name="trips") if f["name"] == "avg_daily_trips" else f for f in DRIVER_SCHEMA["fields"]]
    views = parse_views([spec(schema={"file": write_schema(tmp_path, fields)},
                              field_mapping={"trips": "avg_daily_trips"})])
    decoder = topic_decoders(views, None)["driver_stats"]
    assert decoder.file_schema is not None
    [plan] = decoder.plans(decoder.file_schema)
    assert {p.column: p.field for p in plan.features}["avg_daily_trips"] == "trips"


def test_a_field_mapping_to_an_unknown_column_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"field_mapping maps 'x' to 'nope'"):
        parse_views([spec(field_mapping={"x": "nope"})])


def test_a_plain_long_timestamp_needs_a_unit(tmp_path: Path) -> None:
    fields = [dict(f, type="long") if f["name"] == "event_timestamp" else f for f in DRIVER_SCHEMA["fields"]]
    path = write_schema(tmp_path, fields)
    with pytest.raises(ConfigError, match=r"timestamp field 'event_timestamp' is a plain Avro long.*timestamp_unit"):
        topic_decoders(parse_views([spec(schema={"file": path})]), None)
    assert topic_decoders(parse_views([spec(schema={"file": path}, timestamp_unit="millis")]), None)


def test_a_topic_claimed_by_two_views_needs_a_rule() -> None:
    other = spec(name="driver_daily", schema={"registry": True})
    first = spec(schema={"registry": True})
    with pytest.raises(ConfigError, match=r"topic 'driver_stats' is also claimed by 'driver_daily'.*record_name"):
        parse_views([first, other])
    views = parse_views([dict(first, record_name="a.Hourly"), dict(other, record_name="a.Daily")])
    assert [v.record_name for v in views] == ["a.Hourly", "a.Daily"]


def test_views_sharing_a_topic_need_registry_framing() -> None:
    views = parse_views([spec(record_name="a.A"), spec(name="other", record_name="a.B")])
    with pytest.raises(ConfigError, match="plain Avro bodies carry no schema id"):
        topic_decoders(views, None)


def test_a_registry_view_without_a_registry_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs schema_registry\.url"):
        topic_decoders(parse_views([spec(schema={"registry": True})]), None)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("project", "feast-demo", "project 'feast-demo' must match"),
    ("name", "drop table", "view name 'drop table' must match"),
    ("topics", ["bad topic"], "not a valid Kafka topic name"),
    ("entities", [{"name": "driver_id\"; --", "value_type": "INT64"}], "join key"),
])
def test_identifiers_that_reach_cql_or_kafka_are_validated(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_views([spec(**{field: value})])


def test_a_schema_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    views = parse_views([spec(schema={"file": str(tmp_path / "missing.avsc")})])
    with pytest.raises(ConfigError, match="cannot read schema file"):
        topic_decoders(views, None)
