"""Avro decoding: Confluent framing, writer schemas by id, and resolution against a feature view.

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
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import fastavro
from fastavro import schemaless_reader

from consumer.core.dtypes import DTYPES, Dtype, Kind
from consumer.core.errors import (
    ConfigError,
    DecodeError,
    FramingError,
    RegistryUnavailable,
    SchemaMismatchError,
    UnknownSchemaError,
)
from consumer.core.redact import redact_url, scrub, url_passwords
from consumer.core.views import FeatureView

_OBJECT_REPR = re.compile(r"\s*(?:from\s+)?<[^<>]*object at 0x[0-9a-fA-F]+>")

MAGIC_BYTE = 0
HEADER_SIZE = 5

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


@dataclass(frozen=True)
class ColumnPlan:
    """How one view column is read from a decoded record."""

    column: str
    field: str
    dtype: Dtype
    nullable: bool
    # Avro type the value arrives as ("string", "bytes", "long", ...), after unwrapping a nullable union.
    avro_type: str
    # For timestamps: multiplier to microseconds (negative: divisor); 0 when not a timestamp.
    to_micros: int = 0


@dataclass(frozen=True)
class Plan:
    """A writer schema resolved against one view."""

    view: FeatureView
    schema_id: int | None
    keys: tuple[ColumnPlan, ...]
    features: tuple[ColumnPlan, ...]
    event_ts: ColumnPlan
    created_ts: ColumnPlan | None


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
    return ColumnPlan(column, source, dtype, nullable, inner, to_micros)


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
    return ColumnPlan(name, name, DTYPES["UnixTimestamp"], nullable, _type_name(avro_type), unit)


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


# --------------------------------------------------------------------------- registry


class SchemaSource(Protocol):
    """Fetches writer schemas by id (a Confluent-compatible schema registry)."""

    def schema_text(self, schema_id: int) -> str:
        """The schema's JSON; raises UnknownSchemaError or RegistryUnavailable."""
        ...

    def latest_text(self, subject: str) -> tuple[int, str]:
        """The latest version of a subject: (schema id, JSON)."""
        ...


class RegistryClient:
    """`SchemaSource` over confluent-kafka's SchemaRegistryClient (used only off the hot path)."""

    def __init__(self, url: str, config: Mapping[str, Any] | None = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url, **dict(config or {})})
        # What errors and `check` show: the URL may carry `user:password@`.
        self.url = redact_url(url)
        self._secrets = url_passwords(url)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return fn()
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(f"{what} is not known to the schema registry at {self.url}") from exc
            raise RegistryUnavailable(f"schema registry at {self.url} failed for {what}: {self._text(exc)}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema registry at {self.url} unreachable for {what}: "
                                      f"{self._text(exc)}") from exc

    def _text(self, exc: Exception) -> str:
        # The HTTP client's message may quote the URL it was given, credentials included.
        return scrub(str(exc), self._secrets)

    def schema_text(self, schema_id: int) -> str:
        schema = self._call(f"schema id {schema_id}", lambda: self._client.get_schema(schema_id))
        if (schema.schema_type or "AVRO") != "AVRO":
            raise SchemaMismatchError(f"schema id {schema_id} is {schema.schema_type}, not AVRO")
        return str(schema.schema_str)

    def latest_text(self, subject: str) -> tuple[int, str]:
        registered = self._call(f"subject {subject!r}", lambda: self._client.get_latest_version(subject))
        return int(registered.schema_id), str(registered.schema.schema_str)


# --------------------------------------------------------------------------- decoding


@dataclass
class TopicDecoder:
    """Decodes the records of one topic and tells which view(s) they belong to.

    With registry framing, records carry a schema id; the writer schema is fetched once per id, and
    its record name selects the view when views share the topic. With plain bodies, the one view of
    the topic gives the writer schema.
    """

    topic: str
    views: list[FeatureView]
    registry: SchemaSource | None = None
    file_schema: WriterSchema | None = None
    _by_id: dict[int, WriterSchema | UnknownSchemaError | SchemaMismatchError] = field(default_factory=dict)
    # The hot path's cache: Confluent header (5 bytes) -> (parsed writer schema, plans), filled by
    # `decode` on the first message of each schema id that resolves.
    fast: dict[bytes, tuple[Any, list[Plan]]] = field(default_factory=dict)

    @property
    def framed(self) -> bool:
        return self.file_schema is None

    def writer(self, value: bytes) -> tuple[WriterSchema, int]:
        """The writer schema of a message, and where its Avro body starts."""
        if self.file_schema is not None:
            return self.file_schema, 0
        if len(value) < HEADER_SIZE:
            raise FramingError(f"{len(value)}-byte value is shorter than the 5-byte Confluent header")
        if value[0] != MAGIC_BYTE:
            raise FramingError(f"magic byte is {value[0]}, not 0: not in the Confluent wire format")
        schema_id = int.from_bytes(value[1:5], "big")
        known = self._by_id.get(schema_id)
        if known is None:
            known = self._fetch(schema_id)
        if isinstance(known, Exception):
            raise known
        return known, HEADER_SIZE

    def _fetch(self, schema_id: int) -> WriterSchema | UnknownSchemaError | SchemaMismatchError:
        assert self.registry is not None
        try:
            result: WriterSchema | UnknownSchemaError | SchemaMismatchError = load_writer_schema(
                self.registry.schema_text(schema_id), schema_id
            )
        except (UnknownSchemaError, SchemaMismatchError) as exc:
            # Permanent answers are cached; RegistryUnavailable is not, so the next try asks again.
            result = exc
        self._by_id[schema_id] = result
        return result

    def plans(self, writer: WriterSchema) -> list[Plan]:
        """The plans of the views this writer schema's records belong to."""
        targets = self.views
        if len(self.views) > 1:
            targets = [v for v in self.views if v.record_name == writer.full_name]
            if not targets:
                names = ", ".join(f"{v.name}={v.record_name}" for v in self.views)
                raise SchemaMismatchError(
                    f"record {writer.full_name!r} matches no view of topic {self.topic!r} ({names})"
                )
        out = []
        for view in targets:
            cache_key = (view.project, view.name)
            plan = writer.plans.get(cache_key)
            if plan is None:
                try:
                    plan = build_plan(view, writer)
                except SchemaMismatchError as exc:
                    plan = exc
                writer.plans[cache_key] = plan
            if isinstance(plan, SchemaMismatchError):
                raise plan
            out.append(plan)
        return out

    def decode(self, value: bytes | None) -> tuple[list[Plan], dict[str, Any]]:
        """Decode one message value. Raises a RecordError subclass, or RegistryUnavailable."""
        if value is None:
            raise FramingError("the message has no value (a tombstone)")
        writer, start = self.writer(value)
        plans = self.plans(writer)
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            record = schemaless_reader(buf, writer.parsed, None)
        except Exception as exc:
            detail = _OBJECT_REPR.sub("", str(exc))
            raise DecodeError(
                f"Avro body does not decode with {_writer_label(writer)}: {type(exc).__name__}: {detail}"
            ) from exc
        extra = len(value) - buf.tell()
        if extra:
            raise DecodeError(f"{extra} trailing bytes after the Avro record ({_writer_label(writer)})")
        if not isinstance(record, dict):
            raise DecodeError(f"{_writer_label(writer)} decoded to {type(record).__name__}, not a record")
        if start:
            self.fast[value[:HEADER_SIZE]] = (writer.parsed, plans)
        else:
            self.fast[b""] = (writer.parsed, plans)
        return plans, record


def _writer_label(writer: WriterSchema) -> str:
    return f"schema id {writer.schema_id}" if writer.schema_id is not None else f"schema {writer.full_name}"


def topic_decoders(views: list[FeatureView], registry: SchemaSource | None) -> dict[str, TopicDecoder]:
    """One decoder per topic; file schemas are read and resolved against their view now.

    Raises ConfigError when a schema file is unreadable or does not fit its view, or when a
    registry-framed view has no registry.
    """
    by_topic: dict[str, list[FeatureView]] = {}
    for view in views:
        for topic in view.topics:
            by_topic.setdefault(topic, []).append(view)
    decoders: dict[str, TopicDecoder] = {}
    for topic, claimants in by_topic.items():
        files = [v for v in claimants if v.schema_ref.file or v.schema_ref.avro]
        if files and len(claimants) > 1:
            raise ConfigError(
                f"topic {topic!r}: plain Avro bodies carry no schema id, so views "
                f"{', '.join(repr(v.name) for v in claimants)} can share it only with `registry: true`"
            )
        if files:
            view = files[0]
            path = view.schema_ref.file
            text = view.schema_ref.avro or ""
            if path is not None:
                try:
                    with open(path, encoding="utf-8") as fh:
                        text = fh.read()
                except OSError as exc:
                    raise ConfigError(f"view {view.name!r}: cannot read schema file {path}: {exc}") from None
            where = f"schema file {path}" if path else "inline Avro schema"
            try:
                writer = load_writer_schema(text)
                build_plan(view, writer)
            except SchemaMismatchError as exc:
                raise ConfigError(f"{exc.reason} [{where}]") from None
            decoders[topic] = TopicDecoder(topic, claimants, file_schema=writer)
        else:
            if registry is None:
                raise ConfigError(
                    f"view {claimants[0].name!r}: `registry: true` needs schema_registry.url in the config"
                )
            decoders[topic] = TopicDecoder(topic, claimants, registry=registry)
    return decoders


def check_registry_subjects(views: list[FeatureView], registry: SchemaSource) -> None:
    """At start-up: the latest schema of each view's registry subject must resolve against the view."""
    for view in views:
        if not view.schema_ref.registry:
            continue
        subjects = [view.schema_ref.subject] if view.schema_ref.subject else [f"{t}-value" for t in view.topics]
        for subject in subjects:
            try:
                schema_id, text = registry.latest_text(subject)
            except UnknownSchemaError:
                if view.schema_ref.subject:
                    raise ConfigError(f"view {view.name!r}: subject {subject!r} is not in the registry") from None
                continue  # the topic's default subject may not exist yet; records are checked as they come
            try:
                build_plan(view, load_writer_schema(text, schema_id))
            except SchemaMismatchError as exc:
                raise ConfigError(f"{exc.reason} [subject {subject!r}]") from None
