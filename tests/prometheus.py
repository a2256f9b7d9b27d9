"""A real Prometheus (Debian's package, see stack/tools.py) scraping daemons of a test, with our rules loaded."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stack import tools
from tests.daemon import die_with_parent
from tests.helpers import free_port

JOB = "feature-consumer"


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], scrape_interval_s: float,
                 rules: list[dict[str, Any]] | None = None) -> None:
        self.scrape_interval_s = scrape_interval_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        interval = f"{int(scrape_interval_s * 1000)}ms"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        if rules:
            (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
            config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._log = (workdir / "prometheus.log").open("ab")
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [str(tools.prometheus_bin("prometheus")), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: [{"metric": labels, "value": [ts, "v"]}, ...]."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def per_partition(self, expr: str) -> dict[tuple[str, int], float]:
        return {(r["metric"]["topic"], int(r["metric"]["partition"])): float(r["value"][1]) for r in self.query(expr)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
