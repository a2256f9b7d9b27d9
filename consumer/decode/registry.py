"""The schema registry: writer schemas by id (Confluent's API, as Apicurio's ccompat serves it too)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from consumer.core.errors import ConfigError, RegistryUnavailable, SchemaMismatchError, UnknownSchemaError
from consumer.core.redact import redact_url, scrub, url_passwords
from consumer.core.views import FeatureView
from consumer.decode.schema import build_plan, load_writer_schema


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

    def __init__(self, url: str, config: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        # Without a timeout, a registry that hangs would hang the loop, which fetches a new schema id's
        # schema when its first record comes: bounded, it is a transient failure like any other.
        self._client = SchemaRegistryClient({"url": url, "timeout": timeout_s, **dict(config or {})})
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
