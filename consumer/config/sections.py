"""The sections of the configuration, each validated on its own; errors name the section and the key.

`KafkaSettings.consumer_config()` / `producer_config()` are the only places that build librdkafka
configuration; anything in `kafka.settings` is passed through to librdkafka unchanged (its secret-like
properties are held as `SecretStr` meanwhile). Each section hands the part of the daemon it configures a
small typed value: `CassandraSettings.options()`, `BatchSettings.policy()`, `LimitsSettings.limits()`,
`RunSettings.backoff()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator, model_validator

from consumer.cassandra.connection import CassandraOptions
from consumer.core.policy import Backoff, BatchPolicy, Limits
from consumer.core.redact import is_secret_property, redact_url
from consumer.core.views import TOPIC, check_identifier

Consistency = Literal["ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"]
SerialConsistency = Literal["SERIAL", "LOCAL_SERIAL"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# librdkafka properties the daemon sets itself and depends on, with why: `kafka.settings` is applied after
# them, so it could otherwise silently break commit-after-write.
_RESERVED_PROPERTIES = {
    "enable.auto.commit": "the daemon commits offsets itself, only once their records' writes have an outcome",
    "enable.auto.offset.store": "the daemon commits offsets itself, only once their records' writes have an "
                                "outcome",
    "partition.assignment.strategy": "the daemon's rebalance handling is built on cooperative-sticky assignment",
    "group.id": "set kafka.group_id instead (the lag command and dead-letter headers name the group from it)",
    "acks": "dead letters must be acknowledged by every in-sync replica before their offsets are committed",
    "enable.idempotence": "dead letters are produced idempotently, so a retried send does not duplicate them",
    "statistics.interval.ms": "the daemon reads the consumer's statistics to notice a client stuck outside its "
                              "group (kafka.rejoin_after_s)",
}


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "feature-consumer"
    dead_letter_topic: str = "feature-consumer.dead-letter"
    client_id: str = "feature-consumer"
    # Where a group with no committed offset starts.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(45_000, ge=6_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    # A consumer client without its group coordinator this long, while the cluster answers a new client,
    # is replaced (consumer/kafka/watchdog.py). Statistics come every 5 s: keep it well above that.
    rejoin_after_s: float = Field(60.0, ge=15.0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    # librdkafka properties passed through as they are (e.g. fetch.max.bytes). Those holding a secret
    # (`is_secret_property`) are kept as SecretStr, so no representation of the settings shows them.
    settings: dict[str, str | int | float | bool | SecretStr] = Field(default_factory=dict)

    @field_validator("dead_letter_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not TOPIC.match(value):
            raise ValueError(f"{value!r} is not a valid Kafka topic name")
        return value

    @field_validator("settings")
    @classmethod
    def _no_reserved_properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            why = _RESERVED_PROPERTIES.get(name.strip().lower())
            if why is not None:
                raise ValueError(f"{name!r} cannot be set here: {why}")
        return value

    @field_validator("settings")
    @classmethod
    def _secret_properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: SecretStr(str(v)) if is_secret_property(k) and not isinstance(v, SecretStr) else v
                for k, v in value.items()}

    def _passthrough(self, consumer: bool) -> dict[str, Any]:
        """`settings` as librdkafka takes them: secrets revealed, consumer-only properties only for a consumer."""
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                for k, v in self.settings.items() if consumer or not _consumer_only(k)}

    def _common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf

    def consumer_config(self) -> dict[str, Any]:
        conf = self._common()
        conf.update({
            "group.id": self.group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "session.timeout.ms": self.session_timeout_ms,
            "max.poll.interval.ms": self.max_poll_interval_ms,
        })
        conf.update(self._passthrough(consumer=True))
        return conf

    def producer_config(self) -> dict[str, Any]:
        conf = self._common()
        conf.update({"acks": "all", "enable.idempotence": True, "linger.ms": 5})
        conf.update(self._passthrough(consumer=False))
        return conf

    def admin_config(self) -> dict[str, Any]:
        conf = self._common()
        conf.update(self._passthrough(consumer=False))
        return conf


def _consumer_only(key: str) -> bool:
    return key.startswith(("group.", "fetch.", "auto.", "enable.auto", "session.", "max.poll", "partition.",
                           "isolation.", "queued.", "heartbeat."))


_DEFAULT_REPLICATION: dict[str, str | int] = {"class": "SimpleStrategy", "replication_factor": 1}


class CassandraSettings(_Section):
    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1)
    port: int = Field(9042, ge=1, le=65535)
    keyspace: str = "feast"
    username: str | None = None
    password: SecretStr | None = None
    # Data centre of this process: routes requests to local replicas (DCAwareRoundRobinPolicy).
    local_dc: str | None = None
    consistency: Consistency = "LOCAL_QUORUM"
    serial_consistency: SerialConsistency = "LOCAL_SERIAL"
    # Native protocol version. 4 is understood by Cassandra 3.x to 5.0; version 5's checksummed framing is
    # computed in Python by the driver, which costs client CPU on every request.
    protocol_version: int | None = 4
    request_timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # Conditional batches in flight at once (the sliding window of the writer).
    max_in_flight: int = Field(512, ge=1, le=4096)
    # Entities whose stored timestamps this process remembers, to skip certainly stale writes.
    # About 410 bytes an entry with its key (tracemalloc): ~100 MiB when full, within the pod's memory limit.
    cache_entries: int = Field(250_000, ge=0)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    # Replication of the keyspace `init-schema` creates when it does not exist.
    replication: dict[str, str | int] = Field(default_factory=lambda: _DEFAULT_REPLICATION.copy())

    @field_validator("keyspace")
    @classmethod
    def _keyspace(cls, value: str) -> str:
        return check_identifier(value, "keyspace")

    @model_validator(mode="after")
    def _client_key_needs_its_certificate(self) -> CassandraSettings:
        # A key is never presented alone: the server checks the certificate it belongs to. (The certificate
        # alone is fine: its file may hold the key too.)
        if self.ssl_key_file and not self.ssl_cert_file:
            raise ValueError("ssl_key_file is set without ssl_cert_file, the client certificate it belongs to")
        return self

    @property
    def tls(self) -> bool:
        """Any ssl_* setting asks for TLS: a client certificate without a CA file must not mean plaintext."""
        return bool(self.ssl_ca_file or self.ssl_cert_file or self.ssl_key_file)

    def options(self) -> CassandraOptions:
        """What the Cassandra writer takes, with the password revealed to it alone."""
        values = self.model_dump(exclude={"password"})
        values["hosts"] = tuple(values["hosts"])
        return CassandraOptions(**values, password=self.password.get_secret_value() if self.password else None)


class RegistrySettings(_Section):
    # May carry `user:password@`: it is shown (repr, dumps) with the password masked.
    url: str
    # `user:password` for HTTP basic authentication.
    basic_auth_user_info: SecretStr | None = None
    # A request that takes longer fails (transient: the records wait and are tried again).
    timeout_s: float = Field(10.0, gt=0)

    @field_serializer("url")
    def _shown_url(self, url: str) -> str:
        return redact_url(url)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value

    def client_config(self) -> dict[str, Any]:
        if self.basic_auth_user_info is None:
            return {}
        return {
            "basic.auth.credentials.source": "USER_INFO",
            "basic.auth.user.info": self.basic_auth_user_info.get_secret_value(),
        }


class BatchSettings(_Section):
    """When records go to the writer, and how many at once (see consumer/core/policy.py)."""

    max_records: int = Field(5000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(250, ge=1)
    # Bounds a batch and the intake for large records (keys and values; librdkafka's own prefetch is bounded
    # by queued.max.messages.kbytes).
    max_bytes: int = Field(32 << 20, ge=1)
    # Batches being written at once (see consumer/core/policy.py).
    max_in_flight: int = Field(16, ge=1, le=256)

    def policy(self) -> BatchPolicy:
        return BatchPolicy(self.max_records, self.max_wait_ms, self.max_bytes, self.max_in_flight)


class LimitsSettings(_Section):
    max_value_bytes: int = Field(1 << 20, ge=1)
    max_list_items: int = Field(10_000, ge=1)
    max_future_ms: int | None = Field(24 * 3600 * 1000, ge=0)

    def limits(self) -> Limits:
        return Limits(self.max_value_bytes, self.max_list_items, self.max_future_ms)


class RunSettings(_Section):
    # On SIGTERM: time to finish in-flight writes, commit and leave the group.
    drain_timeout_s: float = Field(20.0, gt=0)
    # Retry pause after a transient failure grows from min to max.
    backoff_min_ms: int = Field(200, ge=1)
    backoff_max_ms: int = Field(10_000, ge=1)

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_min_ms, self.backoff_max_ms)


class MetricsSettings(_Section):
    host: str = "0.0.0.0"
    # 0: any free port (the chosen one is logged).
    port: int = Field(9400, ge=0, le=65535)
    # /healthz fails when the loop has not turned for this long.
    stuck_after_s: float = Field(60.0, gt=0)
    # How often log end offsets are asked of the brokers (and Cassandra is pinged for /readyz).
    lag_interval_s: float = Field(5.0, gt=0)


