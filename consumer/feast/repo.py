"""Feature views from a Feast feature repository (`--feast-repo PATH`).

The repository's `feature_store.yaml` and registry are read with Feast's own SDK, imported only in this
mode (`pip install 'feature-consumer[feast]'`). Why not parse the registry protobuf ourselves: it is
Feast's internal format, versioned with Feast, and its SDK is the one reader that stays right across
versions; importing it lazily keeps Feast (hundreds of MB, with its own pins) out of the default
install and image.

Every view with a `KafkaSource` whose message format is `AvroFormat` becomes a view of ours, exactly as
if written in our config file: its project, join keys (with their value types), features (Feast
dtypes), topic, timestamp field, created timestamp column, field mapping, the Avro schema from
`AvroFormat.schema_json` (plain Avro bodies, as Feast's stream ingestion reads them), and the repo's
`entity_key_serialization_version`. Not the views' `ttl`: Feast's own online writers and its Cassandra
reads ignore it too (docs/feast.md says why the daemon does). Views without a `KafkaSource` are
skipped; a `KafkaSource` in another format is refused, since its view expects to be fed from Kafka and
skipping it would leave it unfed.

The Cassandra online store's settings (hosts, port, keyspace, credentials, local data centre, protocol)
and the sources' bootstrap servers become defaults of our settings; the config file and the environment
still override them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from consumer.core.errors import ConfigError
from consumer.core.redact import describe_error
from consumer.core.views import FeatureView, parse_views

log = logging.getLogger(__name__)
T = TypeVar("T")

# prometheus-client's switches for its multiprocess mode (the lower-case one is its deprecated spelling).
_PROMETHEUS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


@dataclass
class FeastRepo:
    project: str
    views: list[FeatureView]
    cassandra: dict[str, Any] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _online_store_settings(online: Any) -> dict[str, Any]:
    if getattr(online, "type", None) != "cassandra":
        raise ConfigError(f"the repo's online store is {getattr(online, 'type', online)!r}, not cassandra")
    if not getattr(online, "hosts", None):
        raise ConfigError("the repo's Cassandra online store has no `hosts` (Astra DB bundles are not supported)")
    out: dict[str, Any] = {"hosts": list(online.hosts), "keyspace": online.keyspace}
    for ours, theirs in [("port", "port"), ("username", "username"), ("password", "password"),
                         ("protocol_version", "protocol_version"), ("request_timeout_s", "request_timeout")]:
        value = getattr(online, theirs, None)
        if value is not None:
            out[ours] = value
    balancing = getattr(online, "load_balancing", None)
    if balancing is not None and getattr(balancing, "local_dc", None):
        out["local_dc"] = balancing.local_dc
    return out


@contextmanager
def _environment_kept(names: tuple[str, ...]) -> Iterator[None]:
    """Put these environment variables back as they were, whatever the block set or removed."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def with_feature_store(repo: Path, needed_by: str, read: Callable[[Any], T]) -> T:
    """What `read` takes from Feast's FeatureStore for the repo; whatever Feast fails on is a ConfigError."""
    # Feast's metrics module, once imported, points prometheus-client's multiprocess mode at a temporary
    # directory of Feast's (deleted when the process exits) and imports prometheus-client, which decides
    # then, once for the whole process, to keep every metric's values in files there: ours too. So
    # prometheus-client is imported first, under our own environment, and whatever Feast set is undone,
    # for the rest of this process and the processes it starts.
    import prometheus_client  # noqa: F401 - imported now for that decision, used by consumer.observe.metrics

    with _environment_kept(_PROMETHEUS_ENV):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from feast import FeatureStore
        except ImportError as exc:
            raise ConfigError(f"{needed_by} needs Feast in this environment: "
                              "pip install 'feature-consumer[feast]'") from exc
        try:
            return read(FeatureStore(repo_path=str(repo)))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever Feast fails on is reported as the repo's config error
            # Feast validates feature_store.yaml with pydantic, whose message quotes the inputs: the online
            # store's, password included. Only locations and messages are reported, and the original is not
            # chained, since a printed traceback would show it.
            raise ConfigError(f"--feast-repo {repo}: Feast cannot read it: {describe_error(exc)}") from None


def _read_with_feast(repo: Path) -> tuple[Any, dict[str, Any], Any, Any]:
    """The repo's config and views as Feast reads them, with Feast's AvroFormat and KafkaSource classes."""
    store, views = with_feature_store(repo, "--feast-repo", lambda store: (store, {
        fv.name: fv for fv in [*store.list_stream_feature_views(), *store.list_feature_views()]}))
    from feast.data_format import AvroFormat
    from feast.data_source import KafkaSource

    return store.config, views, AvroFormat, KafkaSource


def load_feast_repo(path: str | Path) -> FeastRepo:
    """Read a Feast feature repo; ConfigError when it cannot be read or holds what we cannot consume."""
    repo = Path(path)
    if not (repo / "feature_store.yaml").is_file():
        raise ConfigError(f"--feast-repo {repo}: no feature_store.yaml there")
    config, views, AvroFormat, KafkaSource = _read_with_feast(repo)
    result = FeastRepo(project=config.project, views=[], cassandra=_online_store_settings(config.online_store))
    specs = []
    for name, fv in sorted(views.items()):
        source = getattr(fv, "stream_source", None)
        if not isinstance(source, KafkaSource):
            result.skipped.append(f"{name}: no KafkaSource")
            continue
        options = source.kafka_options
        if not isinstance(options.message_format, AvroFormat):
            raise ConfigError(f"view {name!r}: its KafkaSource sends {type(options.message_format).__name__}; "
                              "only AvroFormat is supported")
        if options.kafka_bootstrap_servers:
            result.kafka.setdefault("bootstrap_servers", options.kafka_bootstrap_servers)
        keys = [{"name": c.name, "value_type": str(c.dtype)} for c in fv.entity_columns]
        key_names = {k["name"] for k in keys}
        specs.append({
            "name": name,
            "project": config.project,
            "topics": [options.topic],
            "entities": keys,
            # A StreamFeatureView may list a join key among its features too: it is a key, not a feature.
            "features": [{"name": f.name, "dtype": str(f.dtype)} for f in fv.features if f.name not in key_names],
            "timestamp_field": source.timestamp_field,
            "created_timestamp_field": source.created_timestamp_column or None,
            "field_mapping": dict(source.field_mapping or {}),
            "schema": {"avro": options.message_format.schema_json},
            "entity_key_serialization_version": config.entity_key_serialization_version,
        })
    result.views = parse_views(specs)
    for reason in result.skipped:
        log.info("feast repo: view %s is not fed from Kafka; skipped", reason)
    if not result.views:
        raise ConfigError(f"--feast-repo {repo}: no feature view with a KafkaSource in AvroFormat")
    return result
