"""Decoding one topic's messages: Confluent framing, the writer schema by id, and the view(s) it feeds.

The decoder keeps, per Confluent header (or for plain bodies, per topic), the parsed writer schema and
the plans of the views its records feed: after the first record of a schema id, decoding a record is
one fastavro read with no lookups beyond a dictionary. Everything else (a new schema id, a value that is
not in the wire format, a body that does not decode) takes the slow path, which raises the typed error.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any, cast

from fastavro import schemaless_reader

from consumer.core.errors import ConfigError, DecodeError, FramingError, SchemaMismatchError, UnknownSchemaError
from consumer.core.views import FeatureView, views_by_topic
from consumer.decode.mapping import Plan
from consumer.decode.registry import SchemaSource
from consumer.decode.schema import WriterSchema, build_plan, load_writer_schema

_OBJECT_REPR = re.compile(r"\s*(?:from\s+)?<[^<>]*object at 0x[0-9a-fA-F]+>")

MAGIC_BYTE = 0
HEADER_SIZE = 5


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
    # The fast path's cache: Confluent header (5 bytes; empty for plain bodies) -> (parsed writer schema,
    # plans), filled by the slow path on the first record of each schema id that decodes.
    _known: dict[bytes, tuple[Any, list[Plan]]] = field(default_factory=dict)
    _start: int = field(init=False)  # where the Avro body starts

    def __post_init__(self) -> None:
        self._start = 0 if self.file_schema is not None else HEADER_SIZE

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
        """Decode one message value: the plans of the views it feeds, and the record.

        Raises a RecordError subclass, or RegistryUnavailable (transient: nothing is cached for it).
        """
        if value is not None:
            start = self._start
            known = self._known.get(value[:start])
            if known is not None:
                buf = io.BytesIO(value)
                buf.seek(start)
                try:
                    # A record schema always reads a dict (the slow path checked it once per schema).
                    record = cast("dict[str, Any]", schemaless_reader(buf, known[0], None))
                except Exception:  # noqa: BLE001 - the slow path decodes it again to raise the typed error
                    record = None
                if record is not None and buf.tell() == len(value):
                    return known[1], record
        return self._decode_slow(value)

    def _decode_slow(self, value: bytes | None) -> tuple[list[Plan], dict[str, Any]]:
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
        self._known[value[:start]] = (writer.parsed, plans)
        return plans, record


def _writer_label(writer: WriterSchema) -> str:
    return f"schema id {writer.schema_id}" if writer.schema_id is not None else f"schema {writer.full_name}"


def topic_decoders(views: list[FeatureView], registry: SchemaSource | None) -> dict[str, TopicDecoder]:
    """One decoder per topic; file schemas are read and resolved against their view now.

    Raises ConfigError when a schema file is unreadable or does not fit its view, or when a
    registry-framed view has no registry.
    """
    decoders: dict[str, TopicDecoder] = {}
    for topic, claimants in views_by_topic(views).items():
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
