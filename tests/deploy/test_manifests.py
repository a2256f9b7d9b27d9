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

    scaler = docs.get("ScaledObject")
    if scaler is not None:
        trigger = scaler["spec"]["triggers"][0]["metadata"]
        assert trigger["consumerGroup"] == settings.kafka.group_id
        assert trigger["topic"] in settings.topics
        assert trigger["excludePersistentLag"] == "true"
        assert trigger["allowIdleConsumers"] == "false"


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
