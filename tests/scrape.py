"""Watching a running daemon from outside, as Prometheus and the kubelet do: `/metrics` and `/healthz`
sampled over time in a thread, and what the samples say (pauses, counters, log end offsets).

A pause here is a span of samples in which every assigned partition is paused
(`feature_consumer_partition_paused` 1), from the sample in which `feature_consumer_transient_failures_total`
rose: a failing dependency pauses every partition at once, and counts the failure. A partition paused for
backpressure alone (its queue holds its share of the intake) is not a pause of the daemon; but a pause
ends only when a partition runs again, which may be later than the failure's end while a full intake
drains. The daemon's log has the failure's own span (`log_pauses`).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Scrape = dict[str, dict[Labels, float]]


def get(port: int, path: str, timeout_s: float = 5) -> tuple[int, str]:
    """(status, body); status 0 when nothing answers (not listening, or no answer within `timeout_s`)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def scrape(port: int) -> Scrape:
    _, text = get(port, "/metrics")
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(metrics: Scrape, name: str, **labels: str) -> float:
    """The sum of a series over the label sets that carry `labels`."""
    want = set(labels.items())
    return sum(v for k, v in metrics.get(name, {}).items() if want <= set(k))


def by_partition(metrics: Scrape, name: str) -> dict[tuple[str, int], float]:
    return {(dict(k)["topic"], int(dict(k)["partition"])): v for k, v in metrics.get(name, {}).items()}


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    health: int  # /healthz status (0: no answer)
    metrics: Scrape


@dataclass(frozen=True)
class Pause:
    start: float  # monotonic time of the first sample with every partition paused
    end: float  # of the first sample after it with a partition running again (or the last sample)
    failures: float  # transient failures counted meanwhile

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Sampler:
    """Scrapes one daemon's `/metrics` and asks its `/healthz` every `interval_s`, in a thread."""

    def __init__(self, port: int, interval_s: float = 0.5) -> None:
        self.port = port
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{port}", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            health, _ = get(self.port, "/healthz", timeout_s=3)
            metrics = scrape(self.port) if health else {}
            self.samples.append(Sample(started, health, metrics))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    # ------------------------------------------------------------------ what the samples say

    def between(self, start: float = 0.0, end: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def last(self) -> Scrape:
        """A fresh scrape (counters as they stand now), or the last sample's when the daemon is gone."""
        fresh = scrape(self.port)
        if fresh:
            return fresh
        return next((s.metrics for s in reversed(self.samples) if s.metrics), {})

    def pauses(self) -> list[Pause]:
        """Spans in which every assigned partition was paused because a dependency failed: each from the
        sample where a transient failure was counted (backpressure may have paused every partition a while
        before) to the first sample with a partition running again."""
        out: list[Pause] = []
        samples = [s for s in self.samples if s.metrics]
        start: Sample | None = None
        before = 0.0
        for sample in samples:
            failures = total(sample.metrics, "feature_consumer_transient_failures_total")
            if _all_paused(sample.metrics):
                if start is None and failures > before:
                    start = sample
                continue
            if start is not None:
                out.append(Pause(start.at, sample.at, failures - before))
                start = None
            before = failures
        if start is not None:
            out.append(Pause(start.at, samples[-1].at, total(samples[-1].metrics,
                                                             "feature_consumer_transient_failures_total") - before))
        return out

    def health_failures(self) -> list[Sample]:
        """Samples whose `/healthz` did not answer 200, from the first one that did (start-up aside); all of
        them when none did. No sample at all is an error of the test, not a healthy daemon."""
        assert self.samples, "the daemon was never sampled"
        first = next((i for i, s in enumerate(self.samples) if s.health == 200), 0)
        return [s for s in self.samples[first:] if s.health != 200]


def _all_paused(metrics: Scrape) -> bool:
    """Every assigned partition paused (a partition never paused or resumed has no series yet)."""
    paused = sum(1 for v in metrics.get("feature_consumer_partition_paused", {}).values() if v == 1)
    return paused > 0 and paused == total(metrics, "feature_consumer_assigned_partitions")


STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_pauses(log: str) -> list[float]:
    """Seconds between each "... failing (...) ... partitions paused" line of a daemon's log and the next
    "answers again; partitions resumed"."""
    out: list[float] = []
    since: datetime | None = None
    for line in log.splitlines():
        match = STAMP.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if "partitions paused" in line and " failing (" in line and since is None:
            since = at
        elif "answers again; partitions resumed" in line and since is not None:
            out.append((at - since).total_seconds())
            since = None
    return out


def describe_pauses(pauses: Iterable[Pause]) -> str:
    spans = [f"{p.seconds:.1f}" for p in pauses]
    return f"{len(spans)} ({', '.join(spans)} s)" if spans else "0"
