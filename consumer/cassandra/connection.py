"""Connecting to Cassandra: the options the writer needs, TLS, and the driver's cluster object.

`CassandraOptions` is all this package knows of the configuration: the CLI builds it from the
`cassandra:` section of the settings (`CassandraSettings.options()`).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.core.errors import ConfigError, StoreUnavailable


@dataclass(frozen=True)
class CassandraOptions:
    hosts: Sequence[str] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "feast"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_dc: str | None = None
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    protocol_version: int | None = 4
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    # Conditional batches in flight at once (the sliding window of the writer).
    max_in_flight: int = 512
    # Entities whose stored timestamps the writer remembers, to skip certainly stale writes (0: none).
    cache_entries: int = 250_000
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    # Replication of the keyspace `init-schema` creates when it does not exist.
    replication: Mapping[str, str | int] = field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": 1})

    @property
    def tls(self) -> bool:
        """Any ssl_* setting asks for TLS: a client certificate without a CA file must not mean plaintext."""
        return bool(self.ssl_ca_file or self.ssl_cert_file or self.ssl_key_file)


def ssl_context(options: CassandraOptions) -> ssl.SSLContext | None:
    """The driver's TLS context, or None for plaintext.

    Any ssl_* setting turns TLS on, as configuring SSL does in DataStax's Java driver; without
    `ssl_ca_file` the server is verified against the system's CAs. The server's certificate must also name
    the address the driver connects to (hostname checking is on). Files that cannot be loaded are a
    configuration error naming the key, not a traceback at the first write.
    """
    if not options.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=options.ssl_ca_file)
    except OSError as exc:
        raise ConfigError(f"cassandra.ssl_ca_file {options.ssl_ca_file}: cannot load it: {exc}") from None
    if options.ssl_cert_file:
        try:
            context.load_cert_chain(options.ssl_cert_file, options.ssl_key_file)
        except OSError as exc:
            raise ConfigError(f"cassandra.ssl_cert_file {options.ssl_cert_file}: cannot load the client "
                              f"certificate and its key: {exc}") from None
    return context


def connect(options: CassandraOptions) -> tuple[Any, Any]:
    """A connected (cluster, session); raises StoreUnavailable when no host answers."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
    from cassandra.query import dict_factory

    o = options
    profile = ExecutionProfile(
        # Replicas shuffled: a request sent again after a timeout may go to another replica, so one hung
        # node does not hold every write of the entities it is first replica for.
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=o.local_dc), shuffle_replicas=True),
        consistency_level=ConsistencyLevel.name_to_value[o.consistency],
        serial_consistency_level=ConsistencyLevel.name_to_value[o.serial_consistency],
        request_timeout=o.request_timeout_s,
        row_factory=dict_factory,
    )
    kwargs: dict[str, Any] = {
        "port": o.port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": o.connect_timeout_s,
        "control_connection_timeout": o.connect_timeout_s,
        "reconnection_policy": ExponentialReconnectionPolicy(0.5, 5.0),
    }
    if o.protocol_version:
        kwargs["protocol_version"] = o.protocol_version
    if o.username:
        kwargs["auth_provider"] = PlainTextAuthProvider(username=o.username, password=o.password or "")
    context = ssl_context(o)
    if context is not None:
        kwargs["ssl_context"] = context
    cluster = Cluster(list(o.hosts), **kwargs)
    try:
        session = cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        raise StoreUnavailable(f"Cassandra at {list(o.hosts)}:{o.port} is unreachable: {exc}") from exc
    return cluster, session
