"""End-to-end guarded upserts per second for one consumer process on the local stack, against two anchors
measured in the same run on the same rows:

  (a) a tuned raw cassandra-driver loop issuing the same conditional writes from already decoded rows
      (the conditional batches our run issued, replayed with `execute_concurrent` at the best of several
      concurrencies, into a table seeded the same way): the ceiling for conditional writes here;
  (b) Feast 0.67's own `FeatureStore.write_to_online_store` into its Cassandra online store on the same
      rows (blind INSERTs, unguarded), in its own virtualenv.

Ours: the records are produced to a topic first; the daemon's pipeline (built exactly as `run` builds it)
consumes them until its commits reach the log end. Every entity is seeded with an older version first,
so that each write is a guarded update, as in a steady stream.

Also: p50/p99 event-to-online latency at half the measured uniform rate, and (with --rss-records) the
peak RSS of `feature-consumer run` while it catches up on a backlog.

    .venv/bin/python -m bench.e2e                          # uniform and Zipf, latency
    .venv/bin/python -m bench.e2e --rss-records 1000000    # plus the backlog run (several minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import yaml
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.app import build
from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.schema import table_name
from consumer.cassandra.writer import CassandraStore
from consumer.config import load_settings
from consumer.core.guard import NULL_MS
from consumer.core.store import RowStatus, WriteReport
from consumer.core.views import FeatureView
from consumer.decode.coalesce import ViewBatch
from consumer.events import Events
from consumer.kafka.offsets import OffsetReader, group_lag
from consumer.kafka.source import TP
from stack import feastenv, localstack
from stack.example import example_view_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "driver_hourly_stats.avsc").read_text())
PARSED = fastavro.parse_schema({**SCHEMA, "fields": [
    {**f, "type": "long"} if isinstance(f["type"], dict) else f for f in SCHEMA["fields"]]})
PARTITIONS = 4


@dataclass
class Record:
    driver_id: int
    event_ms: int
    conv: float
    acc: float
    trips: int

    def value(self) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, PARSED, {
            "driver_id": self.driver_id, "event_timestamp": self.event_ms * 1000, "created": self.event_ms * 1000,
            "conv_rate": self.conv, "acc_rate": self.acc, "avg_daily_trips": self.trips})
        return buf.getvalue()


def make_records(n: int, entities: int, zipf_s: float | None, seed: int, start_ms: int) -> list[Record]:
    rng = np.random.default_rng(seed)
    if zipf_s is None:
        ids = rng.choice(entities, size=n, replace=n > entities)
    else:
        weights = 1.0 / np.arange(1, entities + 1) ** zipf_s
        ids = rng.choice(entities, size=n, p=weights / weights.sum())
    conv, acc, trips = rng.random(n), rng.random(n), rng.integers(0, 1000, n)
    return [Record(int(ids[i]) + 1, start_ms + i, float(conv[i]), float(acc[i]), int(trips[i])) for i in range(n)]


class Probe(Events):
    """Watches the pipeline: when its commits reach the log end, stop; what it wrote, and how fresh."""

    def __init__(self, ends: Mapping[TP, int], stop: Any) -> None:
        self.ends = dict(ends)
        self.done: dict[TP, int] = {}
        self.stop = stop
        self.first: float | None = None
        self.last: float | None = None
        self.written: list[tuple[str, int, int, dict[str, bytes]]] = []
        self.freshness: list[float] = []
        self.consumed = 0
        self.keep_rows = True
        self.has_assignment = threading.Event()

    def batch_assembled(self, batch: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.consumed += batch.size

    def view_written(self, view_batch: ViewBatch, report: WriteReport, now: float) -> None:
        rows = view_batch.rows
        for i, status in enumerate(report.statuses):
            if status in (RowStatus.APPLIED, RowStatus.PARTIAL):
                self.freshness.append(now - int(rows.event_ms[i]) / 1000)
                if self.keep_rows:
                    values = {f: rows.values[f][i] for f in rows.values}
                    self.written.append((rows.entity_keys[i], int(rows.event_ms[i]), int(rows.created_ms[i]), values))

    def assigned(self, partitions: list[TP]) -> None:
        self.has_assignment.set()

    def committed(self, offsets: Mapping[TP, int], now: float) -> None:
        self.done.update(offsets)
        self.last = time.perf_counter()
        if self.ends and all(self.done.get(tp, 0) >= end for tp, end in self.ends.items()):
            self.stop()


@dataclass
class Setup:
    endpoints: localstack.Endpoints
    run: str
    workdir: Path
    topics: list[str] = field(default_factory=list)

    def topic(self, name: str) -> str:
        topic = f"bench_{name}_{self.run}"
        admin = AdminClient({"bootstrap.servers": self.endpoints.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(f"{topic}.dlq", 1, 1)]).values():
            future.result(30)
        self.topics.append(topic)
        return topic

    def settings(self, topic: str, keyspace: str, max_in_flight: int) -> Any:
        config = {
            "kafka": {"bootstrap_servers": self.endpoints.bootstrap_servers, "group_id": f"{topic}-g",
                      "dead_letter_topic": f"{topic}.dlq"},
            "cassandra": {"hosts": [self.endpoints.cql_host], "port": self.endpoints.cql_port, "keyspace": keyspace,
                          "consistency": "ONE", "serial_consistency": "SERIAL", "max_in_flight": max_in_flight,
                          "replication": {"class": "SimpleStrategy", "replication_factor": 1}},
            "limits": {"max_future_ms": None},
            "metrics": {"port": 0},
            "views": [example_view_spec(topic)],
        }
        path = self.workdir / f"{topic}.yaml"
        path.write_text(yaml.safe_dump(config))
        return load_settings(path)


def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> dict[TP, int]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "enable.idempotence": True})
    for i, record in enumerate(records):
        while True:
            try:
                producer.produce(topic, key=str(record.driver_id).encode(), value=record.value())
                break
            except BufferError:  # the local queue is full: wait for deliveries
                producer.poll(0.5)
        if i % 20000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return {(r.topic, r.partition): r.log_end for r in group_lag({"bootstrap.servers": bootstrap}, "none", [topic])}


def seed_store(store: CassandraStore, view: FeatureView, keys: list[str]) -> None:
    """An older version of every entity, written blindly: each measured write is then a guarded update."""
    table = table_name(store.options.keyspace, view)
    insert = store.session.prepare(
        f"INSERT INTO {table} (entity_key, feature_name, value, event_ts) VALUES (?, ?, ?, 1)")
    params = [(insert, (k, f.name, b"")) for k in keys for f in view.features]
    for start in range(0, len(params), 50_000):
        execute_concurrent(store.session, params[start:start + 50_000], concurrency=256, raise_on_first_error=True)


def entity_keys(records: Sequence[Record], view: FeatureView) -> list[str]:
    from consumer.feast.keys import entity_key_hex

    ids = np.array(sorted({r.driver_id for r in records}), dtype=np.int64)
    return entity_key_hex(view.join_keys, [ids], 3)


def run_ours(setup: Setup, name: str, records: Sequence[Record], max_in_flight: int, keep_rows: bool = True
             ) -> tuple[Probe, float]:
    topic = setup.topic(name)
    keyspace = f"bench_{name}_{setup.run}"
    settings = setup.settings(topic, keyspace, max_in_flight)
    view = settings.views[0]
    store = CassandraStore(settings.cassandra.options())
    store.create_schema([view], create_keyspace=True)
    seed_store(store, view, entity_keys(records, view))
    store.close()
    ends = produce(setup.endpoints.bootstrap_servers, topic, records)
    probe = Probe(ends, None)
    probe.keep_rows = keep_rows
    daemon = build(settings, serve_metrics=False, extra_events=probe)
    probe.stop = daemon.pipeline.stop
    try:
        daemon.pipeline.run()
    finally:
        daemon.close()
    assert probe.first is not None and probe.last is not None
    return probe, probe.last - probe.first


def anchor_raw(setup: Setup, name: str, probe: Probe, concurrencies: Sequence[int]) -> tuple[float, int]:
    """Replay our conditional writes with the bare driver; returns (best writes/s, best concurrency)."""
    keyspace = f"bench_{name}_raw_{setup.run}"
    settings = setup.settings(f"raw_{name}_{setup.run}", keyspace, 64)
    view = settings.views[0]
    store = CassandraStore(replace(settings.cassandra.options(), keyspace=keyspace))
    store.create_schema([view], create_keyspace=True)
    table = table_name(keyspace, view)
    update = store.session.prepare(
        f"UPDATE {table} SET value = ?, event_ts = ?, created_ts = ? WHERE entity_key = ? AND feature_name = ? "
        "IF event_ts < ?")
    best = (0.0, 0)
    for round_no, concurrency in enumerate(concurrencies):
        seed_store(store, view, sorted({w[0] for w in probe.written}))

        def statements(shift: int = round_no) -> Iterator[tuple[BatchStatement, tuple[()]]]:
            # Built as they are sent, as a loop writing decoded rows would.
            for key, event_ms, created_ms, values in probe.written:
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                created = None if created_ms == NULL_MS else created_ms
                for feature, value in values.items():
                    batch.add(update, (value, event_ms + shift, created, key, feature, event_ms + shift))
                yield batch, ()

        started = time.perf_counter()
        results = execute_concurrent(store.session, statements(), concurrency=concurrency, raise_on_first_error=True)
        seconds = time.perf_counter() - started
        assert all(r.success for r in results)
        rate = len(probe.written) / seconds
        if rate > best[0]:
            best = (rate, concurrency)
    store.close()
    return best


def anchor_feast(setup: Setup, name: str, records: Sequence[Record]) -> float:
    python = feastenv.ensure()
    keyspace = f"bench_{name}_feast_{setup.run}"
    store = CassandraStore(CassandraOptions(hosts=(setup.endpoints.cql_host,), port=setup.endpoints.cql_port,
                                            keyspace=keyspace))
    store.session.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                          "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    store.close()
    rows = setup.workdir / f"{name}.csv"
    with rows.open("w") as fh:
        fh.write("driver_id,event_timestamp,created,conv_rate,acc_rate,avg_daily_trips\n")
        for r in records:
            fh.write(f"{r.driver_id},{r.event_ms},{r.event_ms},{r.conv},{r.acc},{r.trips}\n")
    out = subprocess.run([str(python), str(ROOT / "bench" / "feast_writer.py"), "--rows", str(rows),
                          "--host", setup.endpoints.cql_host, "--port", str(setup.endpoints.cql_port),
                          "--keyspace", keyspace], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["rows"] / result["seconds"])


def latency_run(setup: Setup, rate: float, seconds: float, max_in_flight: int) -> tuple[float, float, int]:
    """p50, p99 event-to-online seconds with records produced at `rate` per second, event time = now.

    The producer is its own process (bench/produce_at_rate.py) and starts once the consumer has its
    partitions and Cassandra has settled after seeding.
    """
    topic = setup.topic("latency")
    keyspace = f"bench_latency_{setup.run}"
    settings = setup.settings(topic, keyspace, max_in_flight)
    view = settings.views[0]
    store = CassandraStore(settings.cassandra.options())
    store.create_schema([view], create_keyspace=True)
    entities = 20_000
    seed_store(store, view, entity_keys([Record(i + 1, 0, 0, 0, 0) for i in range(entities)], view))
    store.close()
    probe = Probe({}, None)
    probe.keep_rows = False
    daemon = build(settings, serve_metrics=False, extra_events=probe)
    probe.stop = daemon.pipeline.stop

    def producer_thread() -> None:
        probe.has_assignment.wait(60)
        time.sleep(5)  # let the group settle and Cassandra flush after seeding
        probe.freshness.clear()
        subprocess.run([sys.executable, str(ROOT / "bench" / "produce_at_rate.py"), setup.endpoints.bootstrap_servers,
                        topic, str(rate), str(seconds), str(entities)], check=True, capture_output=True)
        ends = {(r.topic, r.partition): r.log_end
                for r in group_lag({"bootstrap.servers": setup.endpoints.bootstrap_servers}, "none", [topic])}
        probe.ends = ends
        if all(probe.done.get(tp, 0) >= end for tp, end in ends.items()):
            daemon.pipeline.stop()

    thread = threading.Thread(target=producer_thread, daemon=True)
    thread.start()
    try:
        daemon.pipeline.run()
    finally:
        daemon.close()
    thread.join()
    samples = sorted(probe.freshness)
    return (statistics.median(samples), samples[int(0.99 * (len(samples) - 1))], len(samples))


def rss_run(setup: Setup, records: int, entities: int, zipf_s: float) -> tuple[float, float, float]:
    """(peak RSS MiB, seconds to catch up, records/s) of `feature-consumer run` on a backlog."""
    topic = setup.topic("backlog")
    keyspace = f"bench_backlog_{setup.run}"
    settings = setup.settings(topic, keyspace, 64)
    store = CassandraStore(settings.cassandra.options())
    store.create_schema(settings.views, create_keyspace=True)
    store.close()
    data = make_records(records, entities, zipf_s, 9, int(time.time() * 1000) - records)
    produce(setup.endpoints.bootstrap_servers, topic, data)
    del data
    config = setup.workdir / f"{topic}.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    peak_kib = 0
    lag = OffsetReader(settings.kafka.admin_config(), settings.kafka.group_id)
    try:
        while True:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
            rows = lag.read([topic])
            if rows and all(r.lag == 0 for r in rows):
                break
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited during the backlog run")
            time.sleep(1)
        seconds = time.monotonic() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
    finally:
        lag.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return peak_kib / 1024, seconds, records / seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records per distribution")
    parser.add_argument("--uniform-entities", type=int, default=1_000_000)
    parser.add_argument("--zipf-entities", type=int, default=100_000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--concurrencies", default="32,64,128,256", help="raw anchor: concurrencies tried")
    parser.add_argument("--ours-windows", default="64,128,256", help="ours: cassandra.max_in_flight values tried")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rss-records", type=int, default=0, help="also measure peak RSS on this backlog")
    parser.add_argument("--rss-entities", type=int, default=20_000)
    parser.add_argument("--latency-rate", type=float, default=0.0,
                        help="records/s for the latency phase (default: half the measured uniform rate)")
    parser.add_argument("--phases", default="throughput,latency", help="throughput, latency, rss (comma-separated)")
    args = parser.parse_args(argv)

    endpoints, _ = localstack.up(["kafka", "cassandra"], echo=lambda _: None)
    setup = Setup(endpoints, time.strftime("%H%M%S"), Path(tempfile.mkdtemp(prefix="bench-e2e-")))
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    start_ms = int(time.time() * 1000) - 3_600_000
    print(f"records={args.records} per distribution, {PARTITIONS} partitions, max_in_flight={args.max_in_flight}")
    print()
    phases = set(args.phases.split(",")) | ({"rss"} if args.rss_records else set())
    uniform_rate = args.latency_rate * 2
    if "throughput" in phases:
        uniform_rate = throughput(setup, args, concurrencies, start_ms)
    if "latency" in phases:
        rate = uniform_rate / 2
        p50, p99, n = latency_run(setup, rate, args.latency_seconds, args.max_in_flight)
        print(f"event-to-online latency at {rate:,.0f} records/s (half the uniform rate), {n} rows: "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    if "rss" in phases:
        peak, seconds, rate = rss_run(setup, args.rss_records or 1_000_000, args.rss_entities, args.zipf_s)
        print(f"backlog of {args.rss_records or 1_000_000:,} records (Zipf over {args.rss_entities:,} entities): "
              f"caught up in {seconds:.0f} s ({rate:,.0f} records/s), peak RSS {peak:.0f} MiB")


def throughput(setup: Setup, args: argparse.Namespace, concurrencies: list[int], start_ms: int) -> float:
    windows = [int(w) for w in args.ours_windows.split(",")]
    print("| distribution | ours records/s | ours guarded writes/s | (a) raw conditional writes/s | ours / (a) "
          "| (b) Feast rows/s | ours / (b) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    uniform_rate = 0.0
    for name, entities, zipf_s in [("uniform", args.uniform_entities, None),
                                   ("zipf", args.zipf_entities, args.zipf_s)]:
        records = make_records(args.records, entities, zipf_s, seed=3, start_ms=start_ms)
        best_ours: tuple[float, int, Probe, float] | None = None
        for window in windows:
            probe, seconds = run_ours(setup, f"{name}{window}", records, window)
            if best_ours is None or seconds < best_ours[0]:
                best_ours = (seconds, window, probe, seconds)
        assert best_ours is not None
        seconds, window, probe, _ = best_ours
        ours_records = len(records) / seconds
        ours_writes = len(probe.written) / seconds
        raw, best_concurrency = anchor_raw(setup, name, probe, concurrencies)
        feast = anchor_feast(setup, name, records)
        if name == "uniform":
            uniform_rate = ours_records
        print(f"| {name} ({entities:,} entities{'' if zipf_s is None else f', s={zipf_s}'}) | {ours_records:,.0f} "
              f"(max_in_flight {window}) "
              f"| {ours_writes:,.0f} | {raw:,.0f} (concurrency {best_concurrency}) | {ours_records / raw:.2f} "
              f"| {feast:,.0f} | {ours_records / feast:.2f} |", flush=True)
    print()
    return uniform_rate


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
