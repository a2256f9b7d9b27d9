"""The example feature view (`driver_hourly_stats` of examples/driver_stats.yaml), as the tests, the
benchmarks and the demo's config all describe it: one definition, read from the example config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "driver_stats.yaml"
SCHEMA_PATH = ROOT / "schemas" / "driver_hourly_stats.avsc"


def example_view_spec(topic: str | None = None, registry: bool = False) -> dict[str, Any]:
    """The config-file form of the example view: its schema file as an absolute path, or (with `registry`)
    records in the Confluent wire format; `topic` replaces its topic."""
    spec: dict[str, Any] = dict(yaml.safe_load(EXAMPLE_CONFIG.read_text())["views"][0])
    spec["schema"] = {"registry": True} if registry else {"file": str(SCHEMA_PATH)}
    if topic is not None:
        spec["topics"] = [topic]
    return spec
