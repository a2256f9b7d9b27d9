"""Materialization throughput: `feature-consumer materialize` (guarded) against Feast 0.67's own
`feast materialize` (blind INSERTs), on the same offline data, into the same Cassandra, in one run.

The offline data: a parquet file source of `--rows` driver_hourly_stats rows over `--entities` drivers
(event times spread over two days, created times a little later, in no particular order). Both commands
run from the Feast virtualenv (stack/feastenv.py) as subprocesses, each on a Feast repo of its own (the same
definitions, a fresh keyspace and project per run) made with `feast apply` beforehand; a run is timed from
the command's start to its exit, so Feast's import and the offline read count for both. Rounds alternate
which goes first; `--warmup` rounds (one by default) run first and are not counted, since the first
command on a freshly started Cassandra pays for compiling its Paxos path. Figures: offline rows per
second (the file's rows over the run's wall time), the CPU time of the command's process and of the
local Cassandra meanwhile (from /proc: it includes whatever else uses that Cassandra), medians of the
rounds.

    .venv/bin/python -m bench.materialize            # --rows 100000 --entities 20000 --rounds 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from stack import feastenv, localstack
from stack.example import SCHEMA_PATH

REPO = '''
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, KafkaSource, ValueType
from feast.data_format import AvroFormat
from feast.types import Float32, Int64

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
history = FileSource(name="history", path={history!r}, timestamp_field="event_timestamp",
                     created_timestamp_column="created")
stream = KafkaSource(name="driver_stats_stream", kafka_bootstrap_servers={bootstrap!r}, topic="driver_stats",
                     timestamp_field="event_timestamp", created_timestamp_column="created",
                     message_format=AvroFormat({schema!r}), batch_source=history)
driver_hourly_stats = FeatureView(
    name="driver_hourly_stats", entities=[driver], ttl=timedelta(days=30), source=stream, online=True,
    schema=[Field(name="driver_id", dtype=Int64), Field(name="conv_rate", dtype=Float32),
            Field(name="acc_rate", dtype=Float32), Field(name="avg_daily_trips", dtype=Int64)])
'''


def history(path: Path, rows: int, entities: int, end_s: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    events = end_s - rng.integers(60, 2 * 86_400, rows)
    pd.DataFrame({
        "driver_id": rng.integers(1, entities + 1, rows).astype(np.int64),
        "event_timestamp": pd.to_datetime(events, unit="s", utc=True),
        "created": pd.to_datetime(events + rng.integers(0, 600, rows), unit="s", utc=True),
        "conv_rate": rng.random(rows).astype(np.float32),
        "acc_rate": rng.random(rows).astype(np.float32),
        "avg_daily_trips": rng.integers(0, 1000, rows).astype(np.int64),
    }).to_parquet(path, index=False)


def make_repo(root: Path, endpoints: localstack.Endpoints, keyspace: str, history_path: Path) -> Path:
    repo = root / keyspace
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": f"bench_{uuid.uuid4().hex[:6]}", "registry": "registry.db", "provider": "local",
        "online_store": {"type": "cassandra", "hosts": [endpoints.cql_host], "port": endpoints.cql_port,
                         "keyspace": keyspace, "protocol_version": 4},
        "entity_key_serialization_version": 3,
    }))
    (repo / "repo.py").write_text(textwrap.dedent(REPO).format(
        history=str(history_path), bootstrap=endpoints.bootstrap_servers, schema=SCHEMA_PATH.read_text()))
    return repo


def cassandra_cpu_s() -> float | None:
    """CPU seconds the local stack's Cassandra has used (all of its threads), from /proc; None if unknown."""
    try:
        pid = int((localstack.state_dir() / "cassandra" / "pid").read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(python: Path, argv: list[str], cwd: Path) -> tuple[float, float, float | None]:
    """Wall seconds, CPU seconds of the command's process, CPU seconds of Cassandra meanwhile."""
    before, server = resource.getrusage(resource.RUSAGE_CHILDREN), cassandra_cpu_s()
    started = time.perf_counter()
    done = subprocess.run([str(python.parent / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after, server_after = resource.getrusage(resource.RUSAGE_CHILDREN), cassandra_cpu_s()
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, client, None if server is None or server_after is None else server_after - server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds of both commands run first and not counted (a freshly started "
                             "Cassandra compiles its Paxos path during the first one)")
    args = parser.parse_args()

    python = feastenv.ensure(with_project=True)
    endpoints, _ = localstack.up(["kafka", "cassandra"])
    from cassandra.cluster import Cluster

    cluster = Cluster([endpoints.cql_host], port=endpoints.cql_port, protocol_version=4)
    session = cluster.connect()
    root = Path(tempfile.mkdtemp(prefix="bench-materialize-"))
    end_s = int(time.time()) - 3600
    history_path = root / "history.parquet"
    history(history_path, args.rows, args.entities, end_s)
    window = [pd.Timestamp(end_s - 3 * 86_400, unit="s").isoformat(), pd.Timestamp(end_s, unit="s").isoformat()]
    tools = {
        "feature-consumer materialize": lambda repo: ["feature-consumer", "materialize", "--feast-repo", ".", *window],
        "feast materialize": lambda repo: ["feast", "materialize", *window],
    }
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    server_cpu: dict[str, list[float]] = {name: [] for name in tools}
    keyspaces: list[str] = []
    try:
        for round_ in range(-args.warmup, args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                keyspace = f"bench_mat_{uuid.uuid4().hex[:8]}"
                keyspaces.append(keyspace)
                session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                                "{'class': 'SimpleStrategy', 'replication_factor': 1}")
                repo = make_repo(root, endpoints, keyspace, history_path)
                run(python, ["feast", "apply"], repo)
                took, client, server = run(python, tools[name](repo), repo)
                stored = session.execute(f"SELECT count(*) FROM {keyspace}.{_table(repo)}").one()[0]
                print(json.dumps({"round": round_ if round_ >= 0 else "warm-up", "tool": name,
                                  "seconds": round(took, 2),
                                  "offline_rows_per_s": round(args.rows / took), "client_cpu_s": round(client, 1),
                                  "cassandra_cpu_s": None if server is None else round(server, 1),
                                  "cells": stored}), file=sys.stderr, flush=True)
                drop(session, keyspace)
                if round_ < 0:
                    continue
                seconds[name].append(took)
                cpu[name].append(client)
                if server is not None:
                    server_cpu[name].append(server)
                drop(session, keyspace)
    finally:
        for keyspace in keyspaces:
            drop(session, keyspace)
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    ours = statistics.median(seconds["feature-consumer materialize"])
    print(f"\n{args.rows:,} offline rows over {args.entities:,} entities, medians of {args.rounds} rounds after "
          f"{args.warmup} uncounted (wall time of the command, Feast's import included for both):\n")
    print("| command | seconds | offline rows/s | ours / this | its CPU s | Cassandra CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, times in seconds.items():
        median = statistics.median(times)
        server_s = f"{statistics.median(server_cpu[name]):.1f}" if server_cpu[name] else "-"
        print(f"| `{name}` | {median:.1f} | {args.rows / median:,.0f} | {median / ours:.2f} | "
              f"{statistics.median(cpu[name]):.1f} | {server_s} |")
    print("\nrounds (seconds): " + "; ".join(f"{name} {', '.join(f'{t:.1f}' for t in times)}"
                                           for name, times in seconds.items()))
    print(f"\nreproduce: .venv/bin/python -m bench.materialize --rows {args.rows} --entities {args.entities} "
          f"--rounds {args.rounds} --warmup {args.warmup}")


def drop(session: Any, keyspace: str) -> None:
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
    except Exception as exc:  # noqa: BLE001 - a keyspace left behind is named, the figures are still printed
        print(f"could not drop keyspace {keyspace}: {exc}", file=sys.stderr)


def _table(repo: Path) -> str:
    project = yaml.safe_load((repo / "feature_store.yaml").read_text())["project"]
    return f"{project}_driver_hourly_stats"


if __name__ == "__main__":
    main()
