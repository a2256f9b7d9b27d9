"""Tools the deployment tests run, fetched on first use into the stack's cache (outside the repository).

- kustomize, built from its Go module (the machine's Go toolchain; no binary download from GitHub);
- Prometheus and promtool, from Debian's `prometheus` package, unpacked (not installed) with dpkg.

`python -m stack.tools` fetches both and prints where they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stack.localstack import StackError, cache_dir

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
# The newest release that builds with Go 1.26 (v5.8 asks for Go 1.27).
KUSTOMIZE_VERSION = "v5.7.1"
PROMETHEUS_PACKAGE = "prometheus"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 900) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    except FileNotFoundError as exc:
        raise StackError(f"{what} needs `{cmd[0]}` on PATH") from exc
    except subprocess.CalledProcessError as exc:
        raise StackError(f"{what} failed ({' '.join(cmd)}):\n{exc.stderr[-2000:]}") from exc


def kustomize() -> Path:
    """The kustomize binary, built once with `go install`."""
    bin_dir = cache_dir() / "kustomize" / KUSTOMIZE_VERSION
    binary = bin_dir / "kustomize"
    if binary.is_file():
        return binary
    work = cache_dir() / "go"
    env = {**os.environ, "GOBIN": str(bin_dir), "GOPATH": str(work / "path"),
           "GOCACHE": str(work / "build-cache"), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    _run(["go", "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"], "building kustomize", env=env)
    if not binary.is_file():
        raise StackError(f"`go install` did not leave kustomize in {bin_dir}")
    return binary


def _prometheus_root() -> Path:
    return cache_dir() / "prometheus-deb"


def prometheus_bin(name: str = "prometheus") -> Path:
    """`prometheus` or `promtool` from Debian's package, unpacked into the cache on first use."""
    root = _prometheus_root()
    binary = root / "usr" / "bin" / name
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", PROMETHEUS_PACKAGE]
        try:
            _run(download, "downloading Debian's prometheus package", cwd=Path(tmp))
        except StackError:
            # A machine whose package lists were never fetched: fetch them, then try once more.
            _run(["apt-get", "update"], "refreshing the package lists")
            _run(download, "downloading Debian's prometheus package", cwd=Path(tmp))
        debs = sorted(Path(tmp).glob("prometheus_*.deb"))
        if not debs:
            raise StackError("apt-get download left no prometheus_*.deb")
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[0]), str(partial)], "unpacking the prometheus package")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    if not binary.is_file():
        raise StackError(f"the prometheus package holds no usr/bin/{name}")
    return binary


def main() -> int:
    try:
        print(f"kustomize={kustomize()}")
        print(f"prometheus={prometheus_bin('prometheus')}")
        print(f"promtool={prometheus_bin('promtool')}")
    except StackError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
