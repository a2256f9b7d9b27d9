"""The Grafana dashboard: every query is valid PromQL over series the daemon (or our rules) really export,
and it shows what operators need."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from consumer.observe.metrics import Metrics
from stack import tools
from tests.deploy.manifests import DEPLOY, rule_groups

DASHBOARD = DEPLOY / "grafana" / "feature-consumer-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def exported_names() -> set[str]:
    """Series names the daemon exports, and those the PrometheusRule records."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names = {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}
    names |= {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    return names


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for n, expr in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
        rules.append({"record": f"dashboard:query:{n}", "expr": expr})
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([str(tools.prometheus_bin("promtool")), "check", "rules", str(path)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_series_it_reads_is_exported() -> None:
    used = {name for expr in queries() for name in re.findall(r"\bfeature_consumer[a-z_:]*", expr)}
    assert used and used <= exported_names(), used - exported_names()


def test_it_shows_lag_throughput_guard_outcomes_latency_freshness_and_dead_letters() -> None:
    text = " ".join(queries())
    for series in ("feature_consumer_lag_offsets", "feature_consumer_lag_seconds",
                   "feature_consumer_records_written_total", "feature_consumer_records_stale_total",
                   "feature_consumer_write_latency_seconds_bucket", "feature_consumer_event_to_online_seconds_bucket",
                   "feature_consumer_records_dead_lettered_total"):
        assert series in text, series
    lag_panels = [p for p in dashboard()["panels"] if "lag_offsets" in " ".join(t["expr"] for t in p["targets"])]
    assert any("by (topic, partition)" in t["expr"] for p in lag_panels for t in p["targets"])


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24 and not mine & cells, p["title"]
        cells |= mine
