"""Avro writer schemas, parsed once and resolved against a feature view into a `Plan`.

Each writer schema is resolved against a view once, into a `Plan`: which Avro field feeds which view
column, whether it may be null, and the unit of each timestamp. Records are then decoded with the
writer schema alone (fastavro's per-record schema resolution costs more than the decoding itself), and
the plan projects the fields the view needs; fields the view does not use are ignored, so a producer
that adds a field keeps working, and Avro's promotions (int -> long -> float -> double,
string <-> bytes) are accepted where the view's dtype allows them.

Timestamp logical types are stripped from the writer schema before fastavro parses it, so that
timestamps come back as integers and are converted per batch, not as one datetime per record.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fastavro

from consumer.core.dtypes import DTYPES, Dtype, Kind
from consumer.core.errors import (
    SchemaMismatchError,
)
from consumer.core.views import FeatureView
from consumer.decode.mapping import ColumnPlan, Plan

# Multipliers to microseconds (negative: a divisor).
_TS_LOGICAL_UNITS = {
    "timestamp-millis": 1000,
    "timestamp-micros": 1,
    "timestamp-nanos": -1000,
    "local-timestamp-millis": 1000,
    "local-timestamp-micros": 1,
    "local-timestamp-nanos": -1000,
}
_CONFIG_UNITS = {"seconds": 1_000_000, "millis": 1000, "micros": 1, "nanos": -1000}

# Which Avro types can feed which scalar kind (Avro's promotions included).
_COMPATIBLE: dict[Kind, frozenset[str]] = {
    Kind.INT32: frozenset({"int"}),
    Kind.INT64: frozenset({"int", "long"}),
    Kind.FLOAT32: frozenset({"float", "int", "long"}),
    Kind.FLOAT64: frozenset({"double", "float", "int", "long"}),
    Kind.STRING: frozenset({"string", "bytes", "enum"}),
    Kind.BYTES: frozenset({"bytes", "string", "fixed"}),
    Kind.BOOL: frozenset({"boolean"}),
    Kind.UNIX_TIMESTAMP: frozenset({"int", "long"}),
}


@dataclass
class WriterSchema:
    """A writer schema, parsed once, with the plans resolved from it (per view, on first use)."""

    schema_id: int | None
    raw: dict[str, Any]
    parsed: Any
    full_name: str
    plans: dict[tuple[str, str], Plan | SchemaMismatchError] = field(default_factory=dict)


# --------------------------------------------------------------------------- schema inspection


def _full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_named(schema: Any, named: dict[str, Any], namespace: str | None = None) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, named, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            ns = schema.get("namespace", namespace)
            name = str(schema.get("name", ""))
            full = name if "." in name or not ns else f"{ns}.{name}"
            named[full] = schema
            named.setdefault(name, schema)
            for f in schema.get("fields", []) if kind in ("record", "error") else []:
                _collect_named(f.get("type"), named, ns)
        elif kind == "array":
            _collect_named(schema.get("items"), named, namespace)
        elif kind == "map":
            _collect_named(schema.get("values"), named, namespace)


def _unwrap(avro_type: Any, named: dict[str, Any]) -> tuple[Any, bool]:
    """Resolve a named reference and a nullable union; return (type, nullable)."""
    nullable = False
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        nullable = len(branches) < len(avro_type)
        if len(branches) != 1:
            raise ValueError("is a union of several non-null types, which no feature dtype maps to")
        avro_type = branches[0]
    if isinstance(avro_type, str) and avro_type in named:
        avro_type = named[avro_type]
    return avro_type, nullable


def _type_name(avro_type: Any) -> str:
    return str(avro_type.get("type")) if isinstance(avro_type, dict) else str(avro_type)


def _describe(avro_type: Any) -> str:
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        base = _type_name(avro_type)
        return f"{base} ({logical})" if logical else base
    return json.dumps(avro_type) if isinstance(avro_type, list) else str(avro_type)


def _timestamp_unit(avro_type: Any, view: FeatureView) -> int:
    logical = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
    base = _type_name(avro_type)
    if logical in _TS_LOGICAL_UNITS and base == "long":
        return _TS_LOGICAL_UNITS[logical]
    if base in ("long", "int") and logical is None:
        if view.timestamp_unit is None:
            raise ValueError(
                f"is a plain Avro {base}; give it a timestamp logical type or set the view's timestamp_unit"
            )
        return _CONFIG_UNITS[view.timestamp_unit]
    raise ValueError(f"is Avro {_describe(avro_type)}, not a timestamp (a long with a timestamp logical type)")


def _column_plan(
    view: FeatureView, column: str, dtype: Dtype, fields: Mapping[str, Any], named: dict[str, Any], what: str
) -> ColumnPlan:
    source = view.source_field(column)
    if source not in fields:
        mapped = f" (read from Avro field {source!r})" if source != column else ""
        raise ValueError(f"{what} {column!r}{mapped} is missing from the writer schema")
    try:
        avro_type, nullable = _unwrap(fields[source], named)
        if dtype.is_list:
            if _type_name(avro_type) != "array":
                raise ValueError(f"is Avro {_describe(avro_type)}, but dtype {dtype} needs an array")
            item_type, _ = _unwrap(avro_type["items"], named)
            inner = _type_name(item_type)
        else:
            item_type, inner = avro_type, _type_name(avro_type)
        to_micros = 0
        if dtype.kind is Kind.UNIX_TIMESTAMP:
            to_micros = _timestamp_unit(item_type, view)
        elif inner not in _COMPATIBLE[dtype.kind] or (
            isinstance(item_type, dict) and item_type.get("logicalType") in _TS_LOGICAL_UNITS
        ):
            raise ValueError(f"is Avro {_describe(item_type)}, which cannot hold dtype {dtype}")
    except ValueError as exc:
        raise ValueError(f"{what} {column!r}: Avro field {source!r} {exc}") from None
    text_from = None
    if not dtype.is_list and dtype.kind is Kind.STRING and inner in ("bytes", "fixed"):
        text_from = Kind.BYTES
    elif not dtype.is_list and dtype.kind is Kind.BYTES and inner == "string":
        text_from = Kind.STRING
    return ColumnPlan(column, source, dtype, nullable, text_from, to_micros)


def _timestamp_plan(
    view: FeatureView, name: str, fields: Mapping[str, Any], named: dict[str, Any], what: str
) -> ColumnPlan:
    if name not in fields:
        raise ValueError(f"{what} {name!r} is missing from the writer schema")
    try:
        avro_type, nullable = _unwrap(fields[name], named)
        unit = _timestamp_unit(avro_type, view)
    except ValueError as exc:
        raise ValueError(f"{what} {name!r} {exc}") from None
    return ColumnPlan(name, name, DTYPES["UnixTimestamp"], nullable, None, unit)


def build_plan(view: FeatureView, writer: WriterSchema) -> Plan:
    """Resolve a writer schema against a view; raise SchemaMismatchError naming view and field."""
    raw = writer.raw
    if not isinstance(raw, dict) or raw.get("type") not in ("record", "error"):
        raise SchemaMismatchError(f"view {view.name!r}: the writer schema is not an Avro record")
    named: dict[str, Any] = {}
    _collect_named(raw, named)
    fields = {f["name"]: f["type"] for f in raw.get("fields", [])}
    try:
        keys = tuple(
            _column_plan(view, e.name, e.value_type, fields, named, "join key") for e in view.entities
        )
        feats = tuple(
            _column_plan(view, f.name, f.dtype, fields, named, "feature") for f in view.features
        )
        event = _timestamp_plan(view, view.timestamp_field, fields, named, "timestamp field")
        created = (
            _timestamp_plan(view, view.created_timestamp_field, fields, named, "created timestamp field")
            if view.created_timestamp_field
            else None
        )
    except ValueError as exc:
        where = f"schema id {writer.schema_id}" if writer.schema_id is not None else "the writer schema"
        raise SchemaMismatchError(f"view {view.name!r}: {exc} ({where}, record {writer.full_name})") from None
    return Plan(view, writer.schema_id, keys, feats, event, created)


def strip_logical_types(schema: Any) -> Any:
    """The schema without logical types: values decode as their base types (timestamps as integers)."""
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


def load_writer_schema(text: str | Mapping[str, Any], schema_id: int | None = None) -> WriterSchema:
    """Parse a writer schema once. Logical types are dropped: values come back as their base types."""
    try:
        raw = json.loads(text) if isinstance(text, str) else copy.deepcopy(dict(text))
        parsed = fastavro.parse_schema(strip_logical_types(raw))
    except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
        what = f"schema id {schema_id}" if schema_id is not None else "the schema"
        raise SchemaMismatchError(f"{what} is not a valid Avro schema: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaMismatchError("the writer schema is not an Avro record")
    return WriterSchema(schema_id, raw, parsed, _full_name(raw))


