"""The layout's rules (docs/architecture.md), checked on what importing a module really loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "consumer"


def loaded_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing `modules`."""
    code = f"import sys\nfor m in {list(modules)!r}: __import__(m)\nimport json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def _modules(package: str) -> list[str]:
    return sorted(f"consumer.{package}.{p.stem}" for p in (PACKAGE / package).glob("*.py") if p.stem != "__init__")


def test_core_imports_neither_pandas_nor_librdkafka_nor_the_configuration() -> None:
    loaded = loaded_by(*_modules("core"))
    for heavy in ("pandas", "confluent_kafka", "cassandra", "fastavro", "consumer.config", "pydantic_settings"):
        assert heavy not in loaded, heavy


def test_the_loop_does_not_read_the_configuration() -> None:
    loaded = loaded_by("consumer.pipeline")
    assert "consumer.config" not in loaded and "pydantic_settings" not in loaded


@pytest.mark.parametrize("package", ["core", "decode", "feast", "cassandra", "kafka", "observe"])
def test_packages_import_only_what_the_layout_allows(package: str) -> None:
    allowed = {
        "core": {"core"},
        "decode": {"core", "decode", "feast"},
        "feast": {"core", "feast"},
        "cassandra": {"core", "cassandra"},
        "kafka": {"core", "kafka"},
        "observe": {"core", "kafka", "observe", "decode", "events"},
    }[package]
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("consumer."):
                part = node.module.split(".")[1]
                assert part in allowed, f"{path.relative_to(ROOT)} imports {node.module}"


def test_no_module_outgrows_the_layout() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 380, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
