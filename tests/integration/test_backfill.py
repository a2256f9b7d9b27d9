"""Backfill and stream against the real Kafka and Cassandra: whichever comes first, the newer wins."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.daemon import Daemon, Deployment
from tests.helpers import driver_view
from tests.workload import HOUR_MS, Event, compare, entity_key, expected_state

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(make_deployment: Callable[..., Deployment]) -> Deployment:
    return make_deployment("bf")


def events(drivers: range, hour: int, first_index: int, base_ms: int) -> list[Event]:
    return [Event(first_index + i, d, base_ms + hour * HOUR_MS + d, base_ms + hour * HOUR_MS + d,
                  round(0.01 * d + hour / 100, 6), 0.5, hour * 1000 + d) for i, d in enumerate(drivers)]


def as_frame(rows: list[Event], path: Path) -> Path:
    frame = pd.DataFrame({
        "driver_id": [e.driver_id for e in rows],
        "event_timestamp": pd.to_datetime([e.event_ms for e in rows], unit="ms", utc=True),
        "created": pd.to_datetime([e.created_ms for e in rows], unit="ms", utc=True),
        "conv_rate": [e.conv_rate for e in rows],
        "acc_rate": [e.acc_rate for e in rows],
        "avg_daily_trips": [e.trips for e in rows],
    })
    frame.to_parquet(path)
    return path


def backfill(deployment: Deployment, path: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "consumer.cli", "backfill", "-c", str(deployment.config_path),
                             "--input", str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


@pytest.mark.parametrize("stream_first", [True, False], ids=["stream-then-backfill", "backfill-then-stream"])
def test_the_newer_value_survives_whichever_writer_comes_first(deployment, reader, tmp_path, stream_first) -> None:
    base = 1_790_000_000_000
    # Drivers 1-40: the stream holds hour 10, the backfill hour 5 (older). Drivers 41-60: the backfill is newer.
    stream = events(range(1, 41), 10, 0, base) + events(range(41, 61), 2, 40, base)
    offline = events(range(1, 41), 5, 60, base) + events(range(41, 61), 7, 100, base)
    path = as_frame(offline, tmp_path / "offline.parquet")

    if not stream_first:
        summary = backfill(deployment, path)
        assert "rows read 60, written 60" in summary
    deployment.produce(stream)
    daemon = Daemon(deployment)
    try:
        deployment.wait_caught_up(daemons=[daemon])
    finally:
        assert daemon.terminate() == 0
    if stream_first:
        summary = backfill(deployment, path)
        assert "rows read 60, written 20, skipped as stale 40" in summary

    expected = expected_state(stream + offline)
    assert {d for d, e in expected.items() if e in offline} == set(range(41, 61))
    result = compare(reader.read, driver_view(), expected)
    assert result.ok, result
    assert reader.read(driver_view(), entity_key(1))["avg_daily_trips"].event_ms == base + 10 * HOUR_MS + 1
