"""A separate virtualenv with Feast 0.67, for tests and benchmarks that run Feast itself.

The daemon imports `feast` only in `--feast-repo` mode (the `feast` extra), to read a feature repo; the
default install and image have no Feast. This environment proves compatibility: byte equality of
encodings, and Feast serving what the daemon wrote, with the daemon itself installed here
(`ensure(with_project=True)`) when it runs from a Feast repo.

    python -m stack.feastenv          # create it if missing, print its python
    python -m stack.feastenv --spark  # also pyspark (and a Kafka client) for bench/feast_spark.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUIREMENT = "feast[cassandra]==0.67.0"
CONSTRAINTS = HERE / "feast-constraints.txt"
# Anchor (d), Feast's own Kafka stream ingestion (bench/feast_spark.py), only when asked (`--spark`): pyspark
# from PyPI (feast[spark] asks pyspark>=4.0.0; 4.1.1's Kafka connector resolves from Maven Central here, 4.0.5's
# is not found and 4.0.2's dependencies are not all served; stack/spark/pom.xml must name the same version), and
# the producer side's Kafka client and Avro writer at constraints.txt's versions. Pinned here, not in
# constraints-feast.txt: that file is exactly what the Feast image installs (tests/deploy/test_dockerfile.py
# checks it against stack/feast-constraints.txt and constraints.txt), and the image has no Spark.
SPARK_REQUIREMENTS = ("pyspark==4.1.1", "py4j==0.10.9.9", "confluent-kafka==2.16.1", "fastavro==1.13.1")


def venv_dir() -> Path:
    return Path(os.environ.get("FEAST_VENV", ROOT / ".venv-feast"))


def python() -> Path:
    return venv_dir() / "bin" / "python"


def _installed() -> bool:
    stamp = venv_dir() / ".installed"
    return python().exists() and stamp.exists() and stamp.read_text().strip() == REQUIREMENT


def _project_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure(echo: bool = True, with_project: bool = False, spark: bool = False) -> Path:
    """Create the virtualenv and install Feast unless that was done already; return its python.

    `with_project` also installs this project into it (editable), as `feature-consumer[feast]` would be:
    for the daemon's `--feast-repo` mode next to Feast itself. `spark` also installs SPARK_REQUIREMENTS.
    """
    if not _installed():
        _install_feast(echo)
    if spark:
        stamp = venv_dir() / ".spark"
        wanted = " ".join(SPARK_REQUIREMENTS)
        if not stamp.exists() or stamp.read_text() != wanted:
            if echo:
                print(f"installing {wanted} into {venv_dir()}", file=sys.stderr)
            proc = subprocess.run(
                [str(python()), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), *SPARK_REQUIREMENTS],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"installing {wanted} into {venv_dir()} failed:\n{proc.stdout}\n{proc.stderr}")
            stamp.write_text(wanted)
    if with_project:
        stamp = venv_dir() / ".project"
        if not stamp.exists() or stamp.read_text() != _project_stamp():
            proc = subprocess.run(
                [str(python()), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), "-e", str(ROOT)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"installing the project into {venv_dir()} failed:\n{proc.stdout}\n{proc.stderr}")
            stamp.write_text(_project_stamp())
    return python()


def _install_feast(echo: bool) -> None:
    target = venv_dir()
    if echo:
        print(f"creating {target} with {REQUIREMENT} (once; this takes a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    proc = subprocess.run([*pip, "-c", str(CONSTRAINTS), REQUIREMENT], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"installing {REQUIREMENT} into {target} failed:\n{proc.stdout}\n{proc.stderr}")
    (target / ".installed").write_text(REQUIREMENT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Create the Feast virtualenv if missing and print its python.")
    parser.add_argument("--spark", action="store_true", help="also pyspark, for bench/feast_spark.py")
    print(ensure(spark=parser.parse_args().spark))
