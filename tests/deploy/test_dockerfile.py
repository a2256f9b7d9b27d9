"""The Dockerfile passes hadolint and keeps the promises docs/deploy.md makes about the image."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_slim_base_and_no_build_tools_in_the_final_image() -> None:
    built = stages()
    assert len(built) >= 2
    final = built[-1]
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert arg and "-slim" in arg.group(1)
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    final_text = "\n".join(final).lower()
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in final_text, tool
    assert any(line.startswith("COPY --from=build") for line in final)


def test_runs_as_a_non_root_user_with_the_daemon_as_entrypoint() -> None:
    final = stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["feature-consumer"]' in final
    cmd = next(line for line in final if line.startswith("CMD "))
    assert '"run"' in cmd
    # Nothing is written to the image's filesystem at run time: no bytecode caches.
    assert any("PYTHONDONTWRITEBYTECODE=1" in line for line in final)


def test_docs_name_the_base_image_the_dockerfile_pins() -> None:
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert arg
    assert f"`{arg.group(1)}`" in (ROOT / "docs" / "deploy.md").read_text()


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file, by normalized name."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[normalize(name)] = version
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets a top-level path into the build context: the last matching pattern
    decides, `!` admits (the plain patterns this file uses, not Go's `**` semantics in general)."""
    admitted = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if fnmatch.fnmatch(path, line.lstrip("!").rstrip("/")):
            admitted = negated
    return admitted


def build_context(target: Path) -> None:
    """What the build stage's COPY instructions put in its WORKDIR, copied to `target`; each source must
    get past .dockerignore, or `docker build` would not find it."""
    for line in stages()[0]:
        if not line.startswith("COPY ") or "--from" in line:
            continue
        *sources, dest = line.split()[1:]
        for source in sources:
            assert dockerignore_admits(source), f".dockerignore keeps {source} out of the build context"
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target / dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target / dest)


# The Dockerfile's own default and the Feast build docs/deploy.md documents.
@pytest.mark.parametrize(("extras", "constraints"), [(None, "constraints.txt"),
                                                     ("parquet,feast", "constraints-feast.txt")])
def test_the_build_stage_install_resolves_against_pypi_with_every_package_pinned(
    tmp_path: Path, extras: str | None, constraints: str
) -> None:
    # No container engine here: the build stage's RUN runs in sh on a copy of its build context, with the
    # stage's ENV and the build argument, and its `pip install` becomes a dry run with this interpreter
    # (the image's Python minor version) that reports what it would install. Resolution only: pip fetches
    # the wheels' metadata, not the wheels.
    context = tmp_path / "src"
    context.mkdir()
    build_context(context)
    build = "\n".join(stages()[0])
    venv = re.search(r"^RUN python -m venv (\S+)$", build, flags=re.M)
    run = re.search(r"^RUN (.*pip install .*)$", build, flags=re.M)
    assert venv and run
    report, args = tmp_path / "report.json", tmp_path / "args.txt"
    pip = tmp_path / "pip"
    pip.write_text(f"""#!/bin/sh
printf '%s\\n' "$@" > {args}
shift  # install
exec {sys.executable} -m pip install --dry-run --ignore-installed --quiet --report {report} "$@"
""")
    pip.chmod(0o755)
    env = {**os.environ, **dict(re.findall(r"(\w+)=(\S+)", " ".join(
        line.removeprefix("ENV ") for line in stages()[0] if line.startswith("ENV "))))}
    env.pop("PIP_NO_CACHE_DIR")  # the image keeps no cache; here it only spares downloads
    default = re.search(r"^ARG EXTRAS=(\S+)$", build, flags=re.M)
    assert default
    env["EXTRAS"] = extras or default.group(1)
    result = subprocess.run(["sh", "-c", run.group(1).replace(f"{venv.group(1)}/bin/pip", str(pip))],
                            cwd=context, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    used = args.read_text().split("\n")
    assert used[used.index("-c") + 1] == constraints

    installed = {normalize(i["metadata"]["name"]): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    assert installed.pop("feature-consumer")  # the project itself, from the copied context
    # Nothing floats: the image gets exactly the versions the constraints file names.
    pinned = pins(ROOT / constraints)
    assert {n: v for n, v in installed.items() if pinned.get(n) != v} == {}
    assert ("feast" in installed) == ("feast" in env["EXTRAS"].split(","))


def test_the_feast_image_pins_feast_as_tested_and_everything_else_as_the_default_image() -> None:
    # The Feast versions are those the compatibility tests run Feast with (stack/feast-constraints.txt);
    # every other package keeps the default image's version, so the two images differ only where Feast
    # forces it.
    feast_image, feast_tested, default = (pins(ROOT / "constraints-feast.txt"),
                                          pins(ROOT / "stack" / "feast-constraints.txt"),
                                          pins(ROOT / "constraints.txt"))
    expected = {n: feast_tested.get(n, default.get(n)) for n in feast_image}
    assert {n: v for n, v in feast_image.items() if expected[n] != v} == {}
    assert feast_image["feast"] == "0.67.0"
