"""Anchor (b) of the end-to-end benchmark; runs inside the Feast virtualenv (stack/feastenv.py).

Creates a Feast feature repo for driver_hourly_stats with a Cassandra online store, applies it, reads the
benchmark's rows (a CSV push frame), and times Feast 0.67's own `FeatureStore.write_to_online_store`
over them, in chunks. Prints one JSON line: {"rows": ..., "seconds": ...}.

    .venv-feast/bin/python bench/feast_writer.py --rows rows.csv --host 127.0.0.1 --port 9042 --keyspace k
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

warnings.filterwarnings("ignore")

import pandas as pd  # noqa: E402
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType  # noqa: E402
from feast.repo_config import RepoConfig  # noqa: E402
from feast.types import Float32, Int64  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keyspace", required=True)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--write-concurrency", type=int, default=100)
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="feast-bench-"))
    config = RepoConfig(
        project="feast_bench",
        registry=str(repo / "registry.db"),
        provider="local",
        online_store={
            "type": "cassandra", "hosts": [args.host], "port": args.port, "keyspace": args.keyspace,
            "protocol_version": 5, "write_concurrency": args.write_concurrency,
        },
        entity_key_serialization_version=3,
        repo_path=str(repo),
    )
    store = FeatureStore(config=config)
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="driver_hourly_stats",
        entities=[driver],
        ttl=timedelta(days=1),
        schema=[Field(name="conv_rate", dtype=Float32), Field(name="acc_rate", dtype=Float32),
                Field(name="avg_daily_trips", dtype=Int64)],
        source=FileSource(path=str(repo / "unused.parquet"), timestamp_field="event_timestamp",
                          created_timestamp_column="created"),
        online=True,
    )
    store.apply([driver, view])

    frame = pd.read_csv(args.rows)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], unit="ms", utc=True)
    frame["created"] = pd.to_datetime(frame["created"], unit="ms", utc=True)
    frame["conv_rate"] = frame["conv_rate"].astype("float32")
    frame["acc_rate"] = frame["acc_rate"].astype("float32")
    chunks = [frame.iloc[i:i + args.chunk] for i in range(0, len(frame), args.chunk)]
    store.write_to_online_store("driver_hourly_stats", chunks[0].iloc[:10])  # warm-up: session, statements
    started = time.perf_counter()
    for chunk in chunks:
        store.write_to_online_store("driver_hourly_stats", chunk)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": len(frame), "seconds": seconds}))


if __name__ == "__main__":
    main()
