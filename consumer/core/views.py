"""Feature view definitions: what a topic's records become in Feast's online store.

A view names its Feast project, its entities (join keys with value types), its features (with Feast
dtypes), its timestamp fields and where the Avro writer schema comes from. Views are validated when
they are loaded; every error names the view and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from consumer.core.dtypes import Dtype, parse_dtype, parse_entity_type
from consumer.core.errors import ConfigError

# Names that end up in CQL identifiers (keyspace, table) or in Feast: letters, digits, underscores.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kafka topic names: Kafka's own rule.
TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Cassandra refuses table names longer than this.
MAX_TABLE_NAME = 222

TimestampUnit = Literal["seconds", "millis", "micros", "nanos"]


def check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(f"{what} {value!r} must match {IDENTIFIER.pattern} (letters, digits, underscores)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


def _identifier(what: str) -> AfterValidator:
    return AfterValidator(lambda value: check_identifier(value, what))


def _dtype(parse: Callable[[str], Dtype]) -> BeforeValidator:
    return BeforeValidator(lambda value: value if isinstance(value, Dtype) else parse(str(value)))


class Entity(_Model):
    """A join key of the view and its Feast value type."""

    name: Annotated[str, _identifier("join key")]
    value_type: Annotated[Dtype, _dtype(parse_entity_type)]


class Feature(_Model):
    name: Annotated[str, _identifier("feature name")]
    dtype: Annotated[Dtype, _dtype(parse_dtype)]


class SchemaRef(_Model):
    """Where the Avro writer schema comes from.

    `file`: the records are plain Avro bodies written with this schema (a path relative to the
    config file, or absolute); `avro`: the same, with the schema's JSON given inline. `registry`: the
    records are in the Confluent wire format and their writer schema is fetched from the schema
    registry by id; `subject`, if given, is checked against the view at start-up (its latest version).
    """

    file: str | None = None
    # The writer schema's JSON itself (what a Feast KafkaSource's AvroFormat carries): plain Avro bodies.
    avro: str | None = None
    registry: bool = False
    subject: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SchemaRef:
        if sum((bool(self.file), bool(self.avro), self.registry)) != 1:
            raise ValueError("set exactly one of `file` or `avro` (plain Avro bodies) or `registry: true`")
        if self.subject and not self.registry:
            raise ValueError("`subject` only applies with `registry: true`")
        return self


class FeatureView(_Model):
    name: str
    project: str
    topics: list[str] = Field(min_length=1)
    entities: list[Entity] = Field(min_length=1)
    features: list[Feature] = Field(min_length=1)
    timestamp_field: str
    created_timestamp_field: str | None = None
    # Avro field name -> view column name (a join key or a feature), as Feast's `field_mapping`.
    field_mapping: dict[str, str] = Field(default_factory=dict)
    schema_ref: SchemaRef = Field(alias="schema")
    # The Avro record's full name: tells views that share a topic apart.
    record_name: str | None = None
    # Unit of timestamp fields that are plain Avro longs without a timestamp logical type.
    timestamp_unit: TimestampUnit | None = None
    # Serialization version of entity keys; Feast's default is 3.
    entity_key_serialization_version: Literal[2, 3] = 3

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_identifier(value, "view name")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return check_identifier(value, "project")

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        for topic in value:
            if not TOPIC.match(topic):
                raise ValueError(f"topic {topic!r} is not a valid Kafka topic name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FeatureView:
        if len(self.table) > MAX_TABLE_NAME:
            raise ValueError(f"table name {self.table!r} is longer than {MAX_TABLE_NAME} characters")
        columns = [e.name for e in self.entities] + [f.name for f in self.features]
        seen: set[str] = set()
        for column in columns:
            if column in seen:
                raise ValueError(f"column {column!r} is declared twice")
            seen.add(column)
        for ts in (self.timestamp_field, self.created_timestamp_field):
            if ts is not None and ts in seen:
                raise ValueError(f"timestamp field {ts!r} is also a join key or feature")
        if self.created_timestamp_field == self.timestamp_field:
            raise ValueError("created_timestamp_field must differ from timestamp_field")
        targets: dict[str, str] = {}
        for avro_field, column in self.field_mapping.items():
            if column not in seen:
                raise ValueError(
                    f"field_mapping maps {avro_field!r} to {column!r}, which is not a join key or feature"
                )
            if column in targets:
                raise ValueError(f"field_mapping maps both {targets[column]!r} and {avro_field!r} to {column!r}")
            targets[column] = avro_field
        return self

    @property
    def table(self) -> str:
        """The online-store table, as Feast's Cassandra store names it: `<project>_<view>`."""
        return f"{self.project}_{self.name}"

    @property
    def join_keys(self) -> list[tuple[str, Dtype]]:
        return [(e.name, e.value_type) for e in self.entities]

    def source_field(self, column: str) -> str:
        """The Avro field a join key or feature column is read from."""
        for avro_field, target in self.field_mapping.items():
            if target == column:
                return avro_field
        return column


def _field_names(raw: dict[str, Any], key: str) -> list[str]:
    items = raw.get(key) or []
    return [str(i.get("name")) for i in items if isinstance(i, dict)]


def _describe_for_view(err: ValidationError, raw: dict[str, Any]) -> str:
    """Name the offending field rather than a list index (features.2 -> feature 'conv_rate')."""
    parts = []
    for item in err.errors():
        loc = list(item["loc"])
        if len(loc) >= 2 and loc[0] in ("features", "entities") and isinstance(loc[1], int):
            names = _field_names(raw, str(loc[0]))
            if loc[1] < len(names):
                what = "feature" if loc[0] == "features" else "join key"
                loc = [f"{what} {names[loc[1]]!r}", *loc[2:]]
        msg = item["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_views(raw: Sequence[Any], base_dir: Path | None = None) -> list[FeatureView]:
    """Validate the `views:` section of a config file. Errors name the view and the field."""
    views: list[FeatureView] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"views[{index}] must be a mapping, not {type(item).__name__}")
        label = f"view {item.get('name')!r}" if item.get("name") else f"views[{index}]"
        try:
            view = FeatureView.model_validate(item)
        except ValidationError as err:
            raise ConfigError(f"{label}: {_describe_for_view(err, item)}") from None
        if view.schema_ref.file and base_dir is not None and not Path(view.schema_ref.file).is_absolute():
            ref = view.schema_ref.model_copy(update={"file": str((base_dir / view.schema_ref.file).resolve())})
            view = view.model_copy(update={"schema_ref": ref})
        views.append(view)
    check_views(views)
    return views


def views_by_topic(views: Iterable[FeatureView]) -> dict[str, list[FeatureView]]:
    """The views that read each topic, in the order given."""
    out: dict[str, list[FeatureView]] = {}
    for view in views:
        for topic in view.topics:
            out.setdefault(topic, []).append(view)
    return out


def check_views(views: Iterable[FeatureView]) -> None:
    """Checks across views: unique names per project, and topics shared only with a rule."""
    views = list(views)
    names: set[tuple[str, str]] = set()
    for view in views:
        if (view.project, view.name) in names:
            raise ConfigError(f"view {view.name!r}: declared twice in project {view.project!r}")
        names.add((view.project, view.name))
    for topic, claimants in views_by_topic(views).items():
        if len(claimants) < 2:
            continue
        record_names = [v.record_name for v in claimants]
        for view in claimants:
            if view.record_name is None:
                others = ", ".join(repr(v.name) for v in claimants if v is not view)
                raise ConfigError(
                    f"view {view.name!r}: topic {topic!r} is also claimed by {others}; "
                    "set `record_name` on each view to tell their records apart"
                )
        if len(set(record_names)) != len(record_names):
            raise ConfigError(
                f"topic {topic!r}: views {', '.join(repr(v.name) for v in claimants)} "
                "share a record_name; each must be distinct"
            )
