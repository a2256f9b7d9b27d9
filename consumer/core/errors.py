"""The project's error hierarchy: every failure is classified once, here.

* `ConfigError`: bad configuration, found at start-up; the process exits with the message.
* `RecordError`: one record is bad (its bytes, its schema, its values). It is never retried: the
  record goes to the dead-letter topic with the reason, and the stream goes on.
* `TransientError`: the world is unwell (registry, Cassandra, Kafka unreachable or timing out).
  The work is retried later; nothing past it is committed.
"""

from __future__ import annotations

from dataclasses import dataclass


class FeatureConsumerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(FeatureConsumerError):
    """The configuration is inconsistent; the message names the view and the field or key."""


@dataclass(frozen=True)
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class RecordError(FeatureConsumerError):
    """A record that cannot be decoded or mapped. Permanent: it is dead-lettered, not retried."""

    def __init__(self, reason: str, source: Source | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source

    @property
    def error_class(self) -> str:
        return type(self).__name__

    def at(self, source: Source) -> RecordError:
        """The same error, attributed to a record."""
        err = type(self).__new__(type(self))
        RecordError.__init__(err, self.reason, source)
        return err

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}" if self.source else self.reason


class FramingError(RecordError):
    """The message is not in the expected wire format (magic byte, schema id, empty value)."""


class UnknownSchemaError(RecordError):
    """The schema id is not known to the registry."""


class SchemaMismatchError(RecordError):
    """The writer schema cannot be resolved to what the feature view needs."""


class DecodeError(RecordError):
    """The Avro body cannot be decoded with its writer schema (truncated, corrupt, trailing bytes)."""


class MappingError(RecordError):
    """The record decoded, but a value cannot become a feature-view row (null key, range, size)."""


class WriteRefused(RecordError):
    """The online store refused this entity's write for a reason retrying does not fix."""


class StoreMisconfigured(ConfigError):
    """Cassandra refuses the writes for a reason no retry fixes (a missing table, refused credentials)."""


class TransientError(FeatureConsumerError):
    """A dependency is unavailable or slow; retry later, commit nothing past the affected records."""


class RegistryUnavailable(TransientError):
    """The schema registry could not be reached or answered with a server error."""


class StoreUnavailable(TransientError):
    """Cassandra could not take the write now (unavailable, overloaded, timed out)."""


class DeadLetterUnavailable(TransientError):
    """The dead-letter topic could not be written."""


class KafkaClientStuck(FeatureConsumerError):
    """The consumer's Kafka client was replaced for being stuck outside its group, and the replacement is stuck
    too while the first has not even closed: the process stops, for its supervisor to start it afresh."""
