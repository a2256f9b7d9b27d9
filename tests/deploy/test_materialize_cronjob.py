"""The materialization CronJob (components/materialize, used by overlays/example): valid for its kind (with
every other object, in test_manifests.py), a command line the daemon's own parser takes, runs that never
overlap, the daemon's lock-down, image and Secret, and a Feast repo that writes where the daemon writes."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from consumer.cli import build_parser, moment
from consumer.config.sections import CassandraSettings
from consumer.feast.repo import _online_store_settings
from stack import feastenv
from tests.deploy.manifests import DEPLOY, build, validate
from tests.deploy.test_manifests import configmaps, mounted_config

WITH_CRONJOB = ["overlays/example"]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: build(DEPLOY / name) for name in WITH_CRONJOB}


def job_pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def mounted_repo(docs: dict[str, dict[str, Any]], tmp_path: Path) -> tuple[Path, argparse.Namespace]:
    """The repo's ConfigMap laid out where the job mounts it; the job's parsed command line."""
    pod = job_pod(docs)
    container = pod["containers"][0]
    args = build_parser().parse_args(container["args"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is not None and mount["mountPath"] == args.feast_repo:
            target = tmp_path / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True)
            for file, text in docs[f"ConfigMap/{source['name']}"]["data"].items():
                (target / file).write_text(text)
            return target, args
    raise AssertionError(f"--feast-repo {args.feast_repo} is not a mounted ConfigMap")



@pytest.mark.parametrize("name", WITH_CRONJOB)
def test_the_job_runs_materialize_incremental_up_to_now_on_the_mounted_repo(built, name: str, tmp_path: Path) -> None:
    docs = configmaps(built[name])
    repo, args = mounted_repo(docs, tmp_path)
    assert (args.command, args.end, args.config) == ("materialize-incremental", "now", None)
    assert moment(args.end, 0).timestamp() == 0
    assert (repo / "feature_store.yaml").is_file()


def test_a_misspelled_cronjob_field_fails(built) -> None:
    cronjob = copy.deepcopy(configmaps(built["overlays/example"])["CronJob"])
    cronjob["spec"]["concurencyPolicy"] = "Forbid"
    assert any("concurencyPolicy" in p for p in validate(cronjob))


def hourly_minutes(schedule: str) -> int:
    """The period, in minutes, of an hourly (or every-N-hours) schedule; anything else is not an example's."""
    match = re.fullmatch(r"(\d+) (\*|\*/(\d+)) \* \* \*", schedule)
    assert match, f"schedule {schedule!r}: not hourly"
    return 60 * int(match.group(3) or 1)


@pytest.mark.parametrize("name", WITH_CRONJOB)
def test_runs_never_overlap_and_one_is_stopped_before_the_next_is_due(built, name: str) -> None:
    cronjob = configmaps(built[name])["CronJob"]["spec"]
    job = cronjob["jobTemplate"]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"  # two runs would race on the registry
    assert job["activeDeadlineSeconds"] < 60 * hourly_minutes(cronjob["schedule"])
    assert cronjob["startingDeadlineSeconds"] < 60 * hourly_minutes(cronjob["schedule"])
    assert job["template"]["spec"]["restartPolicy"] == "Never" and job["backoffLimit"] <= 1


@pytest.mark.parametrize("name", WITH_CRONJOB)
def test_the_job_is_locked_down_reads_the_daemons_secret_and_runs_its_image_with_feast(built, name: str) -> None:
    docs = configmaps(built[name])
    daemon, pod = docs["Deployment"]["spec"]["template"]["spec"], job_pod(docs)
    assert pod["securityContext"] == daemon["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    container, daemon_container = pod["containers"][0], daemon["containers"][0]
    assert container["securityContext"] == daemon_container["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]] and env["HOME"] == "/tmp"
    secret = mounts[env["FEATURE_CONSUMER_SECRETS_DIR"]]
    daemon_secret = next(v for v in daemon["volumes"] if "secret" in v)["secret"]["secretName"]
    assert volumes[secret["name"]]["secret"]["secretName"] == daemon_secret
    assert not any("PASSWORD" in name for name in env)
    # The writable mounts: the temporary directory and the volume with the registry, nothing else.
    assert {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} == \
        {"/tmp", mounts_of_registry(docs)}
    repository, tag = daemon_container["image"].rsplit(":", 1)
    assert container["image"] == f"{repository}:{tag}-feast"


def mounts_of_registry(docs: dict[str, dict[str, Any]]) -> str:
    pod = job_pod(docs)
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (path,) = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims]
    return str(path)


def repo_online_store(feature_store: dict[str, Any]) -> dict[str, Any]:
    """What the daemon takes from the repo's online store (consumer/feast/repo.py), read from the YAML."""
    online = dict(feature_store["online_store"])
    balancing = online.pop("load_balancing", None)
    return _online_store_settings(SimpleNamespace(
        **{"username": None, "password": None, "protocol_version": None, "request_timeout": None, **online},
        load_balancing=SimpleNamespace(**balancing) if balancing else None))


# The settings of the job's writes that must be the daemon's: the same cluster, keyspace, user and data
# centre, and the same consistency (the job has no config file: it takes the repo's values and defaults).
SAME = ("hosts", "port", "keyspace", "username", "local_dc", "consistency", "serial_consistency",
        "protocol_version", "ssl_ca_file", "ssl_cert_file", "ssl_key_file")


def job_versus_daemon(docs: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      online: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Where the job's writes and the daemon's would differ: {what: (job's, daemon's)}."""
    from consumer.config import load_settings

    for key in [k for k in os.environ if k.startswith("FEATURE_CONSUMER_")]:
        monkeypatch.delenv(key)
    daemon = load_settings(mounted_config(docs, tmp_path / "daemon"))
    repo, _ = mounted_repo(docs, tmp_path / "job")
    feature_store = yaml.safe_load((repo / "feature_store.yaml").read_text())
    job = CassandraSettings(**(online if online is not None else repo_online_store(feature_store)))
    pairs = {what: (getattr(job, what), getattr(daemon.cassandra, what)) for what in SAME}
    projects = sorted({v.project for v in daemon.views})
    pairs["project"] = (feature_store["project"], projects[0] if len(projects) == 1 else projects)
    # The registry is written by every run: on the writable volume, not in the read-only ConfigMap.
    registry = feature_store["registry"]
    registry_path = registry if isinstance(registry, str) else registry.get("path", "")
    pairs["registry on the volume"] = (registry_path.startswith(mounts_of_registry(docs) + "/"), True)
    return {what: pair for what, pair in pairs.items() if pair[0] != pair[1]}


@pytest.mark.parametrize("name", WITH_CRONJOB)
def test_the_job_writes_where_and_as_the_daemon_writes(built, name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert job_versus_daemon(configmaps(built[name]), tmp_path, monkeypatch) == {}


def repo_file(docs: dict[str, Any]) -> dict[str, Any]:
    (name,) = [k for k in docs if k.startswith("ConfigMap/feature-consumer-feast-repo")]
    data: dict[str, Any] = docs[name]["data"]
    return data


def edit(change: Any) -> Any:
    def mutate(docs: dict[str, Any]) -> None:
        data = repo_file(docs)
        feature_store = yaml.safe_load(data["feature_store.yaml"])
        change(feature_store)
        data["feature_store.yaml"] = yaml.safe_dump(feature_store)
    return mutate


@pytest.mark.parametrize(("mutate", "differs"), [
    (edit(lambda fs: fs["online_store"].update(keyspace="feast_staging")), {"keyspace"}),
    (edit(lambda fs: fs["online_store"].update(hosts=["cassandra-0.cassandra.features.svc"])), {"hosts"}),
    (edit(lambda fs: fs["online_store"].pop("load_balancing")), {"local_dc"}),
    (edit(lambda fs: fs["online_store"].pop("username")), {"username"}),
    (edit(lambda fs: fs.update(project="feast_other")), {"project"}),
    (edit(lambda fs: fs.update(registry="/etc/feature-consumer/feast-repo/registry.db")), {"registry on the volume"}),
])
def test_a_repo_that_writes_elsewhere_than_the_daemon_fails(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            mutate: Any, differs: set[str]) -> None:
    docs = copy.deepcopy(configmaps(built["overlays/example"]))
    mutate(docs)
    assert job_versus_daemon(docs, tmp_path, monkeypatch).keys() == differs


FEAST_READS = '''
import json, os, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from feast.repo_config import load_repo_config
from consumer.feast.repo import _online_store_settings
repo = Path(sys.argv[1])
config = load_repo_config(repo, repo / "feature_store.yaml")
print(json.dumps({"online": _online_store_settings(config.online_store), "project": config.project,
                  "registry": config.registry.path, "offline": config.offline_store.type}))
'''


@pytest.mark.feast
@pytest.mark.parametrize("name", WITH_CRONJOB)
def test_feast_reads_the_repo_as_the_test_does(built, name: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Feast 0.67's own loader takes the mounted feature_store.yaml, and the daemon's reader makes of it what
    the comparison above assumed."""
    docs = configmaps(built[name])
    repo, _ = mounted_repo(docs, tmp_path / "feast")
    python = feastenv.ensure(with_project=True)
    done = subprocess.run([str(python), "-c", FEAST_READS, str(repo)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.strip().splitlines()[-1])
    feature_store = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert read["online"] == repo_online_store(feature_store)
    assert (read["project"], read["registry"]) == (feature_store["project"], feature_store["registry"])
    assert job_versus_daemon(docs, tmp_path / "compare", monkeypatch, online=read["online"]) == {}
