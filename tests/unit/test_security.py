"""Configuration and security: secrets from the environment or files, never shown; identifiers that cannot
inject CQL; TLS and SASL settings reach the clients."""

from __future__ import annotations

import re
import ssl
import sys
import traceback
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from consumer.cassandra.connection import ssl_context
from consumer.cassandra.schema import create_keyspace_cql, create_table_cql, quote, table_name
from consumer.config import CassandraSettings, load_settings
from consumer.core.errors import ConfigError, RegistryUnavailable
from consumer.core.redact import is_secret_property, redact_url
from consumer.decode.registry import RegistryClient
from consumer.feast.repo import load_feast_repo
from tests.helpers import ROOT, driver_view

EXAMPLE = ROOT / "examples" / "driver_stats.yaml"


def test_secrets_come_from_a_secrets_directory_and_the_environment_wins(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "FEATURE_CONSUMER_CASSANDRA__PASSWORD").write_text("from-file\n")
    (tmp_path / "FEATURE_CONSUMER_KAFKA__SASL_PASSWORD").write_text("sasl-from-file")
    monkeypatch.setenv("FEATURE_CONSUMER_SECRETS_DIR", str(tmp_path))
    settings = load_settings(EXAMPLE)
    assert settings.cassandra.password is not None and settings.kafka.sasl_password is not None
    assert settings.cassandra.password.get_secret_value() == "from-file"
    assert settings.kafka.sasl_password.get_secret_value() == "sasl-from-file"
    monkeypatch.setenv("FEATURE_CONSUMER_CASSANDRA__PASSWORD", "from-env")
    assert load_settings(EXAMPLE).cassandra.password.get_secret_value() == "from-env"  # type: ignore[union-attr]


def test_secrets_never_show_in_the_settings_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_CONSUMER_CASSANDRA__PASSWORD", "hunter2-cassandra")
    monkeypatch.setenv("FEATURE_CONSUMER_KAFKA__SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("FEATURE_CONSUMER_SCHEMA_REGISTRY__URL", "http://registry:8081")
    monkeypatch.setenv("FEATURE_CONSUMER_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO", "user:hunter2-registry")
    settings = load_settings(EXAMPLE)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "hunter2" not in shown
    # ... but they do reach the clients that need them.
    assert settings.kafka.consumer_config()["sasl.password"] == "hunter2-kafka"
    assert settings.schema_registry is not None
    assert settings.schema_registry.client_config()["basic.auth.user.info"] == "user:hunter2-registry"


def test_a_secrets_directory_that_is_not_one_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURE_CONSUMER_SECRETS_DIR", "/nonexistent/dir")
    with pytest.raises(ConfigError, match=r"FEATURE_CONSUMER_SECRETS_DIR=/nonexistent/dir is not a directory"):
        load_settings(EXAMPLE)


@pytest.mark.parametrize("keyspace", ['feast"; DROP KEYSPACE x; --', "feast.other", "1feast", "fe ast", ""])
def test_keyspace_names_that_could_inject_cql_are_refused(keyspace: str) -> None:
    with pytest.raises(ConfigError, match=r"cassandra\.keyspace"):
        load_settings(EXAMPLE, {"cassandra": {"keyspace": keyspace}})


def test_identifiers_are_quoted_in_every_statement() -> None:
    view = driver_view()
    assert table_name("feast", view) == '"feast"."feast_demo_driver_hourly_stats"'
    assert create_table_cql("feast", view).startswith('CREATE TABLE IF NOT EXISTS "feast"."feast_demo_driver')
    with pytest.raises(ValueError, match="must match"):
        quote('a"b')


def test_replication_values_are_cql_literals() -> None:
    cql = create_keyspace_cql("feast", {"class": "NetworkTopologyStrategy", "dc1'; DROP": 3})
    assert cql == ("CREATE KEYSPACE IF NOT EXISTS \"feast\" WITH replication = "
                   "{'class': 'NetworkTopologyStrategy', 'dc1''; DROP': 3}")


def test_tls_and_sasl_settings_pass_through_to_librdkafka() -> None:
    settings = load_settings(EXAMPLE, {"kafka": {
        "bootstrap_servers": "broker:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "ingest", "sasl_password": "pw", "ssl_ca_location": "/etc/kafka/ca.pem",
        "settings": {"ssl.endpoint.identification.algorithm": "https", "fetch.max.bytes": 1048576},
    }})
    consumer = settings.kafka.consumer_config()
    producer = settings.kafka.producer_config()
    for conf in (consumer, producer):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.username"] == "ingest"
        assert conf["ssl.ca.location"] == "/etc/kafka/ca.pem"
        assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert consumer["fetch.max.bytes"] == 1048576
    assert "fetch.max.bytes" not in producer  # consumer-only properties stay out of the producer


class _OnlineStore(BaseModel):
    type: str
    hosts: list[str]
    password: str | None = None


class _FeastConfigError(Exception):
    """Like Feast's own: the ValidationError is its argument, and its text is the error's text."""

    def __init__(self, error: Exception, path: Path) -> None:
        super().__init__(error, path)
        self.text = f"{error}\nat {path}"

    def __str__(self) -> str:
        return self.text


def _feast_that_fails_validating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just enough of `feast` (not installed in unit runs) for `load_feast_repo` to reach FeatureStore, which
    validates the online store as Feast does and fails on a missing key."""

    class FeatureStore:
        def __init__(self, repo_path: str) -> None:
            config = {"type": "cassandra", "password": "hunter2-feast"}  # `hosts` is missing
            try:
                _OnlineStore(**config)
            except ValidationError as err:
                raise _FeastConfigError(err, Path(repo_path) / "feature_store.yaml") from err

    names: dict[str, dict[str, Any]] = {
        "feast": {"FeatureStore": FeatureStore},
        "feast.data_format": {"AvroFormat": object},
        "feast.data_source": {"KafkaSource": object},
    }
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def test_a_feast_repo_that_fails_validation_is_reported_without_its_values(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "feature_store.yaml").write_text("project: p\n")
    _feast_that_fails_validating(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        load_feast_repo(tmp_path)
    # Neither the message nor a printed traceback shows the values pydantic quotes...
    shown = "".join(traceback.format_exception(caught.value))
    assert "hunter2" not in shown and "input_value" not in shown
    # ... but the field and what is wrong with it are named.
    assert "Feast cannot read it: _FeastConfigError: hosts: Field required" in str(caught.value)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and its key, in PEM files (the certificate can serve as its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feature-consumer")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_cassandra_is_plaintext_only_without_any_ssl_setting() -> None:
    assert ssl_context(CassandraSettings().options()) is None


def test_a_cassandra_client_certificate_without_a_ca_file_still_means_tls(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl_context(CassandraSettings(ssl_cert_file=str(cert_file), ssl_key_file=str(key_file)).options())
    # TLS, verifying the server (against the system's CAs) and its name.
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_cassandra_ca_file_is_the_one_trusted(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl_context(CassandraSettings(ssl_ca_file=str(cert_file), ssl_cert_file=str(cert_file),
                                            ssl_key_file=str(key_file)).options())
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "feature-consumer"),),)]


def test_a_cassandra_key_without_its_certificate_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"cassandra: ssl_key_file is set without ssl_cert_file"):
        load_settings(EXAMPLE, {"cassandra": {"ssl_key_file": "/etc/cassandra/client.key"}})


def test_cassandra_tls_files_that_cannot_be_read_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cassandra\.ssl_cert_file .*missing\.pem: cannot load"):
        ssl_context(CassandraSettings(ssl_cert_file=str(tmp_path / "missing.pem")).options())
    with pytest.raises(ConfigError, match=r"cassandra\.ssl_ca_file .*missing\.pem: cannot load"):
        ssl_context(CassandraSettings(ssl_ca_file=str(tmp_path / "missing.pem")).options())


@pytest.mark.parametrize(("url", "shown"), [
    ("https://ingest:hunter2@registry:8081/apis", "https://ingest:***@registry:8081/apis"),
    ("http://ingest:p%40ss:w@registry", "http://ingest:***@registry"),
    ("http://a:hunter2@r1:8081,http://b:hunter2@r2:8081", "http://a:***@r1:8081,http://b:***@r2:8081"),
    ("http://token@registry:8081", "http://token@registry:8081"),
    ("http://registry:8081", "http://registry:8081"),
    ("http://ingest:hunter2@[::1:8081", "http://***@[::1:8081"),  # urllib cannot split it
])
def test_registry_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_registry_url_with_credentials_is_never_shown_with_them() -> None:
    url = "http://ingest:hunter2@127.0.0.1:8081"
    settings = load_settings(EXAMPLE, {"schema_registry": {"url": url}})
    assert settings.schema_registry is not None
    assert "hunter2" not in repr(settings) + str(settings) + settings.model_dump_json()
    assert settings.schema_registry.url == url  # the client still gets it
    client = RegistryClient(settings.schema_registry.url)
    assert client.url == "http://ingest:***@127.0.0.1:8081"  # what `check` prints and errors name

    def fails() -> None:
        raise OSError(f"cannot connect to {url}")  # a message that quotes the URL it was given

    with pytest.raises(RegistryUnavailable) as caught:
        client._call("schema id 1", fails)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value) == ("schema registry at http://ingest:***@127.0.0.1:8081 unreachable for "
                                 "schema id 1: cannot connect to http://ingest:***@127.0.0.1:8081")


_OAUTH = {"sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": "ingest",
          "sasl.oauthbearer.client.secret": "hunter2-oauth", "ssl.key.pem": "hunter2-pem",
          "ssl.keystore.password": "hunter2-keystore", "fetch.max.bytes": 1048576}


def test_secret_librdkafka_properties_are_never_shown_but_reach_librdkafka() -> None:
    settings = load_settings(EXAMPLE, {"kafka": {"settings": _OAUTH}})
    shown = repr(settings) + str(settings) + settings.model_dump_json() + str(settings.model_dump())
    assert "hunter2" not in shown
    assert "'fetch.max.bytes': 1048576" in shown  # what is not secret is still shown
    for conf in (settings.kafka.consumer_config(), settings.kafka.producer_config(), settings.kafka.admin_config()):
        assert conf["sasl.oauthbearer.client.secret"] == "hunter2-oauth"
        assert conf["ssl.key.pem"] == "hunter2-pem" and conf["ssl.keystore.password"] == "hunter2-keystore"


@pytest.mark.parametrize("name", ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                                  "ssl_key", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
                                  "sasl.oauthbearer.assertion.private.key.passphrase", "SSL.KEY.PASSWORD"])
def test_librdkafka_properties_holding_secrets_are_recognised(name: str) -> None:
    assert is_secret_property(name)
    assert not is_secret_property("sasl.oauthbearer.client.id")
    assert not is_secret_property("ssl.endpoint.identification.algorithm")


def test_check_prints_no_secret_librdkafka_property(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import confluent_kafka.admin

    from consumer import cli
    from consumer.cassandra.writer import CassandraStore
    from consumer.core.errors import StoreUnavailable

    class DownAdmin:
        def __init__(self, conf: dict[str, Any]) -> None:
            self.conf = conf

        def list_topics(self, timeout: float) -> None:
            raise RuntimeError("broker down")

    def down(self: CassandraStore) -> str:
        raise StoreUnavailable("Cassandra does not answer")

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", DownAdmin)
    monkeypatch.setattr(CassandraStore, "ping", down)
    for name, value in _OAUTH.items():
        monkeypatch.setenv(f"FEATURE_CONSUMER_KAFKA__SETTINGS__{name.upper()}", str(value))
    caplog.set_level("DEBUG")
    args = cli.build_parser().parse_args(["check", "--config", str(EXAMPLE)])  # not main: it sets signal handlers
    assert cli.cmd_check(args) == 1
    out = capsys.readouterr()
    assert "FAIL  kafka" in out.out and "FAIL  cassandra" in out.out
    assert "hunter2" not in out.out + out.err + caplog.text


@pytest.mark.parametrize(("name", "why"), [
    ("enable.auto.commit", "commits offsets itself"),
    ("enable.auto.offset.store", "commits offsets itself"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("group.id", "set kafka.group_id instead"),
    ("acks", "acknowledged by every in-sync replica"),
    ("enable.idempotence", "produced idempotently"),
    ("statistics.interval.ms", "stuck outside its group"),
])
def test_librdkafka_properties_the_commits_depend_on_cannot_be_overridden(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"kafka\.settings: '{re.escape(name)}' cannot be set here: .*{why}"):
        load_settings(EXAMPLE, {"kafka": {"settings": {name: "range" if "strategy" in name else "true"}}})
