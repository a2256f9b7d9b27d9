"""Building deploy/ with kustomize and checking every object against its kind's schema.

Built-in kinds go through kubernetes-validate in strict mode (unknown fields fail). Custom resources go
through the pydantic models that cloudcoil generates from the CRDs of KEDA and the Prometheus operator;
those models ignore unknown fields, so an object is also dumped back and must come out as it went in:
a misspelled field is dropped on the way and the difference names it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from stack import tools

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ["overlays/example", "overlays/example-hpa"]
KUBERNETES_VERSION = "1.35.0"
CUSTOM_KINDS: dict[tuple[str, str], Any] = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}


def build(path: str | Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(tools.kustomize()), "build", str(path)], capture_output=True, text=True,
                         check=False, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kustomize build {path} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def differences(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where `kept` (the model's dump) lost or changed something of `given`."""
    if isinstance(given, dict) and isinstance(kept, dict):
        found = []
        for key, value in given.items():
            if key not in kept:
                found.append(f"{path}.{key}: unknown field")
            else:
                found.extend(differences(value, kept[key], f"{path}.{key}"))
        return found
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [d for i, (g, k) in enumerate(zip(given, kept, strict=True)) for d in differences(g, k, f"{path}[{i}]")]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems of one object; empty when it is valid for its kind."""
    model = CUSTOM_KINDS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if model is None:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"no schema for {doc.get('apiVersion')} {doc.get('kind')}: {exc}"]
        return []
    try:
        parsed = model.model_validate(doc)
    except Exception as exc:  # noqa: BLE001 - pydantic's error is the report
        return [str(exc)]
    return differences(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))


def rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's groups: plain Prometheus rule groups, as promtool and Prometheus load them."""
    rule = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    return list(rule["spec"]["groups"])


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}
