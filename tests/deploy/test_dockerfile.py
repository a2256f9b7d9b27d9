"""The Dockerfile passes hadolint and keeps the promises docs/deploy.md makes about the image."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
