"""deploy/ builds, every object is valid for its kind, and the pieces agree with each other and the daemon."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import load_settings
from tests.deploy.manifests import DEPLOY, OVERLAYS, ROOT, build, by_kind, validate

ALL_BUILDS = ["base", *OVERLAYS]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: build(DEPLOY / name) for name in ALL_BUILDS}


@pytest.mark.parametrize("name", ALL_BUILDS)
def test_every_object_is_valid_for_its_kind(built, name: str) -> None:
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate(d) for d in built[name]}
    assert {k: v for k, v in problems.items() if v} == {}


def test_a_misspelled_field_fails_for_built_in_and_custom_kinds(built) -> None:
    docs = by_kind(built["overlays/example"])
    deployment = copy.deepcopy(docs["Deployment"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    assert any("terminationGracePeriodSecond" in p for p in validate(deployment))
    scaled = copy.deepcopy(docs["ScaledObject"])
    scaled["spec"]["maxReplicaCont"] = 3
    assert validate(scaled) == [".spec.maxReplicaCont: unknown field"]
    auth = copy.deepcopy(docs["TriggerAuthentication"])
    auth["spec"]["secretTargetRef"][0]["paramter"] = "username"
    assert validate(auth) == [".spec.secretTargetRef[0].paramter: unknown field"]
    rule = copy.deepcopy(docs["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert validate(rule) == [".spec.groups[0].rules[0].expresion: unknown field"]
    monitor = copy.deepcopy(docs["ServiceMonitor"])
    monitor["spec"]["endpoints"][0]["interval"] = 15  # a number where the CRD wants a duration string
    assert validate(monitor) != []


def mounted_config(docs: dict[str, dict[str, Any]], tmp_path: Path) -> Path:
    """The ConfigMaps laid out as the Deployment mounts them; returns the config file's path."""
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    maps = {d["metadata"]["name"]: d for d in docs.values() if d["kind"] == "ConfigMap"}
    for mount in pod["containers"][0]["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        target = tmp_path / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True)
        for file, text in maps[source["name"]]["data"].items():
            (target / file).write_text(text)
    args = pod["containers"][0]["args"]
    return tmp_path / args[args.index("--config") + 1].lstrip("/")


def configmaps(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = by_kind([d for d in docs if d["kind"] != "ConfigMap"])
    for d in docs:
        if d["kind"] == "ConfigMap":
            out[f"ConfigMap/{d['metadata']['name']}"] = d
    return out


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_pod_reads_a_valid_config_and_gives_the_daemon_time_to_drain(built, name: str, tmp_path: Path,
                                                                         monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("FEATURE_CONSUMER_")]:
        monkeypatch.delenv(key)
    docs = configmaps(built[name])
    settings = load_settings(mounted_config(docs, tmp_path))  # the daemon's own validation, schema files included
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] >= settings.run.drain_timeout_s + 10
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert port == settings.metrics.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    assert env["FEATURE_CONSUMER_SECRETS_DIR"] == secret_mount["mountPath"]
    assert "FEATURE_CONSUMER_CASSANDRA__PASSWORD" not in env and "FEATURE_CONSUMER_KAFKA__SASL_PASSWORD" not in env


# librdkafka's sasl.mechanism (GSSAPI unless set) as KEDA's Kafka scaler names it.
KEDA_SASL = {"GSSAPI": "gssapi", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256",
             "SCRAM-SHA-512": "scram_sha512", "OAUTHBEARER": "oauthbearer"}


def scaler_auth(docs: dict[str, dict[str, Any]], trigger: dict[str, Any], secret: str,
                secret_dir: Path) -> dict[str, str]:
    """The parameters the trigger's TriggerAuthentication hands KEDA's scaler. Each comes from a key of
    the pod's Secret; the value returned is a marker naming that key, and the same marker is written to
    `secret_dir` as the mounted Secret's file, so the daemon reading that key gets the same value."""
    ref = trigger.get("authenticationRef")
    if ref is None:
        return {}
    assert ref.get("kind", "TriggerAuthentication") == "TriggerAuthentication", ref
    auth = docs.get("TriggerAuthentication")
    assert auth is not None and auth["metadata"]["name"] == ref["name"], f"no TriggerAuthentication {ref['name']}"
    # Only Secret references: a value from anywhere else could not be checked against the daemon's.
    assert auth["spec"].keys() == {"secretTargetRef"}, auth["spec"]
    params = {}
    for item in auth["spec"]["secretTargetRef"]:
        assert item["name"] == secret, f"{item['parameter']} comes from {item['name']}, the pod mounts {secret}"
        params[item["parameter"]] = f"secret key {item['key']}"
        (secret_dir / item["key"]).write_text(params[item["parameter"]] + "\n")
    return params


def scaler_and_daemon(docs: dict[str, dict[str, Any]], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[Any, Any]]:
    """Where KEDA's Kafka trigger and the daemon, configured as the pod is, would differ: brokers, group,
    topic and authentication, as {what: (scaler's, daemon's)}."""
    for key in [k for k in os.environ if k.startswith("FEATURE_CONSUMER_")]:
        monkeypatch.delenv(key)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    triggers = [t for t in docs["ScaledObject"]["spec"]["triggers"] if t["type"] == "kafka"]
    assert len(triggers) == 1, "one Kafka trigger, for the daemon's group"
    meta = triggers[0]["metadata"]
    params = scaler_auth(docs, triggers[0], secret, secret_dir)
    # KEDA refuses sasl or tls given both in the trigger and in its TriggerAuthentication.
    assert not {"sasl", "tls"} & meta.keys() & params.keys()
    sees = {**params, **meta}
    monkeypatch.setenv("FEATURE_CONSUMER_SECRETS_DIR", str(secret_dir))
    settings = load_settings(mounted_config(docs, tmp_path))
    kafka = settings.kafka
    sasl = kafka.security_protocol.startswith("SASL_")
    mechanism = kafka.sasl_mechanism or "GSSAPI"
    pairs = {
        "bootstrapServers": (sees["bootstrapServers"], kafka.bootstrap_servers),
        "consumerGroup": (sees["consumerGroup"], kafka.group_id),
        # One trigger measures one topic: the daemon must read no other.
        "topic": (sees.get("topic"), settings.topics[0] if len(settings.topics) == 1 else settings.topics),
        "sasl": (sees.get("sasl", "none"), KEDA_SASL.get(mechanism, mechanism) if sasl else "none"),
        "tls": (sees.get("tls", "disable"), "enable" if kafka.security_protocol in ("SSL", "SASL_SSL") else "disable"),
        # Both sides read the same Secret key, or they differ here.
        "credentials": ("username" in sees and "password" in sees, sasl),
        "username": (sees.get("username"), kafka.sasl_username if sasl else None),
        "password": (sees.get("password"),
                     kafka.sasl_password.get_secret_value() if sasl and kafka.sasl_password else None),
        # A private CA or a client certificate: the daemon has them as files, KEDA needs them as well.
        "ca": ("ca" in sees, kafka.ssl_ca_location is not None),
        "cert": ("cert" in sees and "key" in sees, kafka.ssl_certificate_location is not None),
    }
    return {what: pair for what, pair in pairs.items() if pair[0] != pair[1]}


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_scaler_reads_the_daemons_group_from_the_same_brokers_with_the_same_auth(
    built, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = configmaps(built[name])
    if "ScaledObject" not in docs:
        # The HPA reads the lag from Prometheus, which the daemon exports: no Kafka client to compare.
        assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["type"] == "External"
        return
    assert scaler_and_daemon(docs, tmp_path, monkeypatch) == {}
    meta = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert meta["excludePersistentLag"] == "true"
    assert meta["allowIdleConsumers"] == "false"


def other_brokers(docs: dict[str, Any]) -> None:
    docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["bootstrapServers"] = "kafka.kafka.svc:9092"


def other_mechanism(docs: dict[str, Any]) -> None:
    docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["sasl"] = "scram_sha256"


def no_tls(docs: dict[str, Any]) -> None:
    del docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["tls"]


def no_authentication(docs: dict[str, Any]) -> None:
    del docs["ScaledObject"]["spec"]["triggers"][0]["authenticationRef"]


def a_key_the_daemon_does_not_read(docs: dict[str, Any]) -> None:
    docs["TriggerAuthentication"]["spec"]["secretTargetRef"][0]["key"] = "username"


def other_group(docs: dict[str, Any]) -> None:
    docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "driver-stats"


def other_topic(docs: dict[str, Any]) -> None:
    docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]["topic"] = "driver_stats_v2"


@pytest.mark.parametrize(("mutate", "differs"), [
    (other_brokers, {"bootstrapServers"}), (other_mechanism, {"sasl"}), (no_tls, {"tls"}),
    (no_authentication, {"credentials"}), (a_key_the_daemon_does_not_read, {"username"}),
    (other_group, {"consumerGroup"}), (other_topic, {"topic"}),
])
def test_a_scaler_that_differs_from_the_daemon_fails(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     mutate: Any, differs: set[str]) -> None:
    docs = copy.deepcopy(configmaps(built["overlays/example"]))
    mutate(docs)
    assert scaler_and_daemon(docs, tmp_path, monkeypatch).keys() == differs


def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert users, "the Dockerfile's final stage sets no numeric USER"
    return int(users[-1].split(":")[0])


def test_the_pod_runs_locked_down_as_the_image_user(built) -> None:
    pod = by_kind(built["base"])["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user() != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Something writable for what Python may need at run time, but nothing else.
    assert [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tmp"] == ["/tmp"]
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize(("name", "kind", "field"), [
    ("overlays/example", "ScaledObject", "maxReplicaCount"),
    ("overlays/example-hpa", "HorizontalPodAutoscaler", "maxReplicas"),
])
def test_autoscalers_never_ask_for_more_replicas_than_partitions(built, name: str, kind: str, field: str) -> None:
    scaler = by_kind(built[name])[kind]
    partitions = int(scaler["metadata"]["annotations"]["feature-consumer/topic-partitions"])
    assert 1 <= scaler["spec"][field] <= partitions
    # Never both autoscalers on one Deployment.
    kinds = {d["kind"] for d in built[name]}
    assert not {"ScaledObject", "HorizontalPodAutoscaler"} <= kinds
    assert "replicas" not in by_kind(built[name])["Deployment"]["spec"]  # the autoscaler owns it


def test_service_monitor_service_and_pods_select_each_other(built) -> None:
    docs = by_kind(built["overlays/example"])
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = docs["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    # The alert rules select job="feature-consumer": the job label comes from the Service's label.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "feature-consumer"
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_deployed_schema_is_the_repository_schema() -> None:
    deployed = DEPLOY / "base" / "schemas" / "driver_hourly_stats.avsc"
    assert yaml.safe_load(deployed.read_text()) == yaml.safe_load((ROOT / "schemas" / deployed.name).read_text())
