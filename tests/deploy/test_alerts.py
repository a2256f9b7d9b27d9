"""The PrometheusRule's groups load in `promtool check rules`, and its alerts fire as promtool's tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stack import tools
from tests.deploy.manifests import rule_groups

HERE = Path(__file__).resolve().parent


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tools.prometheus_bin("promtool")), *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(rules_file(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_promtool_unit_tests_show_the_alerts_firing(tmp_path: Path) -> None:
    rules_file(tmp_path)
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("alert", "threshold", "mutated"), [
    # A raised threshold: the expected alert goes missing.
    ("FeatureConsumerLagHigh", "> 300", "> 3000"),
    ("FeatureConsumerWriteFailures", "> 0.05", "> 0.5"),
    # A lowered one: the view below the real threshold alerts as well.
    ("FeatureConsumerWriteFailures", "> 0.05", "> 0.03"),
])
def test_promtool_test_fails_when_a_threshold_changes(tmp_path: Path, alert: str, threshold: str,
                                                      mutated: str) -> None:
    # The check above can fail.
    groups = rule_groups()
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == alert)
    assert rule["expr"].count(threshold) == 1, rule["expr"]
    rule["expr"] = rule["expr"].replace(threshold, mutated)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr
