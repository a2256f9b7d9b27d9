"""End to end, one consumer process on the local stack: guarded upserts per second and freshness, against
anchors measured in the same run on the same records (see docs/performance.md for the table):

  (a) the writer alone on the rows our run wrote, already decoded (bench/anchors.py);
  (b) the fastest raw cassandra-driver loop for the same conditional batches (bench/anchors.py);
  (c) Feast 0.67's `FeatureStore.write_to_online_store` on the same rows (blind INSERTs), in its own
      virtualenv (bench/feast_writer.py);
  (d) Feast 0.67's own Kafka stream ingestion (its Spark processor) on the same topic and records: its
      throughput and freshness (bench/feast_spark.py), when it can run here (`--spark`).

Ours: the records are produced to a topic first; the daemon's pipeline (built exactly as `run` builds it)
consumes them until its commits reach the log end. Every entity is seeded with an older version first,
so that each write is a guarded update, as in a steady stream. CPU is the whole process's, from /proc.
Ours, (a) and (b) run in rounds (`--rounds`), each on freshly seeded entities, the order turning each round;
the table gives medians and each round's ratios. (b)'s window is chosen on a pass before the rounds. An
unreported warm-up round of ours, (a) and (b) comes first (`--warmup-records`).

Freshness (bench/freshness.py) at 10%, 50% and 90% of the measured uniform rate: from each record's
Kafka timestamp to its write's acknowledgement, checked by an outside probe that reads rows back.

    .venv/bin/python -m bench.e2e                          # throughput (uniform, Zipf) and freshness
    .venv/bin/python -m bench.e2e --spark                  # plus anchor (d)
    .venv/bin/python -m bench.e2e --phases rss --rss-records 1000000    # peak RSS on a backlog
    .venv/bin/python -m bench.e2e --phases contention     # Cassandra's CPU per write beside a co-tenant
    .venv/bin/python -m bench.e2e --phases throughput --pin-cassandra   # Cassandra on a core of its own
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import fastavro
import numpy as np
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.anchors import (
    Measured,
    Meter,
    Paced,
    Row,
    raw_loop,
    raw_paced,
    seed_store,
    wait_quiet,
    writer_alone,
)
from bench.contention import contention
from bench.freshness import percentile
from bench.pinning import cassandra_alone, narrowed
from consumer.app import build, settle_heap
from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.writer import CassandraStore
from consumer.config import load_settings
from consumer.core.store import RowStatus, WriteReport
from consumer.core.views import FeatureView
from consumer.decode.coalesce import ViewBatch
from consumer.events import Events
from consumer.kafka.offsets import OffsetReader, group_lag
from consumer.kafka.source import TP
from stack import feastenv, localstack
from stack.example import SCHEMA_PATH, example_view_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads(SCHEMA_PATH.read_text())
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

    def __init__(self, ends: Mapping[TP, int], clock: Callable[[], float] = time.perf_counter) -> None:
        self.ends = dict(ends)
        self._clock = clock
        self.done: dict[TP, int] = {}
        self.stop: Any = None
        self.first: float | None = None
        self.last: float | None = None  # the commit that reached `ends`
        self.complete = False
        self.has_assignment = threading.Event()
        self._batches: dict[int, Any] = {}
        # What was written is looked at after the run: per-row work here would be counted as ours' own CPU.
        self._reports: list[tuple[Any, ViewBatch, WriteReport]] = []

    def batch_assembled(self, batch: Any) -> None:
        if self.first is None:
            self.first = self._clock()
        for view_batch in batch.views:
            self._batches[id(view_batch)] = batch

    def view_written(self, view_batch: ViewBatch, report: WriteReport, waits: list[float]) -> None:
        self._reports.append((self._batches.pop(id(view_batch)), view_batch, report))

    def reset(self) -> None:
        """Forget what was written so far (for `written()` and `freshness()`)."""
        self._reports.clear()

    def _written_rows(self) -> Iterator[tuple[Any, ViewBatch, WriteReport, int]]:
        for batch, view_batch, report in self._reports:
            for i, status in enumerate(report.statuses):
                if status in (RowStatus.APPLIED, RowStatus.PARTIAL):
                    yield batch, view_batch, report, i

    def written(self) -> list[Row]:
        """The rows written, as the anchors take them."""
        out: list[Row] = []
        for _batch, view_batch, _report, i in self._written_rows():
            rows = view_batch.rows
            out.append((rows.entity_keys[i], int(rows.event_ms[i]), int(rows.created_ms[i]),
                        {f: rows.values[f][i] for f in rows.values}))
        return out

    def freshness(self) -> list[float]:
        """Per written row: its acknowledgement (wall clock) minus its record's Kafka timestamp, in seconds."""
        out: list[float] = []
        for batch, view_batch, report, i in self._written_rows():
            _kind, ts_ms = batch.messages[int(view_batch.positions[i])].timestamp()
            out.append(report.done_at[i] - ts_ms / 1000)
        return out

    def assigned(self, partitions: list[TP]) -> None:
        self.has_assignment.set()

    def committed(self, offsets: Mapping[TP, int], now: float) -> None:
        if self.complete:
            # The daemon's shutdown commits the same offsets again, after its loop's last wait: that is not
            # part of the run, and (a) and (b) are timed only up to their last answer.
            return
        self.done.update(offsets)
        self.last = self._clock()
        self._stop_at_ends()

    def set_ends(self, ends: Mapping[TP, int]) -> None:
        """The log ends, learnt during the run; stops it if the commits have reached them already."""
        self.ends = dict(ends)
        self._stop_at_ends()

    def _stop_at_ends(self) -> None:
        if self.ends and all(self.done.get(tp, 0) >= end for tp, end in self.ends.items()):
            self.complete = True
            self.stop()


@dataclass
class Setup:
    endpoints: localstack.Endpoints
    run: str
    workdir: Path
    topics: list[str] = field(default_factory=list)
    meter: Meter = field(default_factory=lambda: Meter(
        {name: localstack.service_pid(name) for name in ("cassandra", "kafka")}))
    quiet: bool = False  # wait for a quiet machine before each candidate, drop its keyspace after it
    waited: list[float] = field(default_factory=list)

    def before_run(self) -> None:
        if self.quiet:
            self.waited.append(wait_quiet())

    def after_run(self, store: CassandraStore) -> None:
        """Left in place, a finished candidate's rows would be flushed and compacted during later runs."""
        if not self.quiet:
            return
        keyspace = store.options.keyspace
        try:
            store.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        except Exception as exc:  # noqa: BLE001 - a keyspace left behind costs later runs a little, not the run
            print(f"could not drop {keyspace}: {exc!r}", file=sys.stderr)

    def topic(self, name: str) -> str:
        topic = f"bench_{name}_{self.run}"
        admin = AdminClient({"bootstrap.servers": self.endpoints.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(f"{topic}.dlq", 1, 1)]).values():
            future.result(30)
        self.topics.append(topic)
        return topic

    def settings(self, topic: str, keyspace: str) -> Any:
        config = {
            "kafka": {"bootstrap_servers": self.endpoints.bootstrap_servers, "group_id": f"{topic}-g",
                      "dead_letter_topic": f"{topic}.dlq"},
            "cassandra": {"hosts": [self.endpoints.cql_host], "port": self.endpoints.cql_port, "keyspace": keyspace,
                          "consistency": "ONE", "serial_consistency": "SERIAL",
                          "replication": {"class": "SimpleStrategy", "replication_factor": 1}},
            "limits": {"max_future_ms": None},
            "metrics": {"port": 0},
            "views": [example_view_spec(topic)],
        }
        path = self.workdir / f"{topic}.yaml"
        path.write_text(yaml.safe_dump(config))
        return load_settings(path)

    def connect(self, keyspace: str) -> CassandraStore:
        return CassandraStore(CassandraOptions(hosts=(self.endpoints.cql_host,), port=self.endpoints.cql_port,
                                               keyspace=keyspace, consistency="ONE", serial_consistency="SERIAL"))

    def store(self, keyspace: str, view: FeatureView, seed_keys: Sequence[str] = ()) -> CassandraStore:
        store = self.connect(keyspace)
        store.create_schema([view], create_keyspace=True)
        if seed_keys:
            seed_store(store, view, seed_keys)
        return store


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


def entity_keys(driver_ids: Sequence[int], view: FeatureView) -> list[str]:
    from consumer.feast.keys import entity_key_hex

    return entity_key_hex(view.join_keys, [np.array(sorted(set(driver_ids)), dtype=np.int64)], 3)


def run_ours(setup: Setup, name: str, records: Sequence[Record]) -> tuple[Probe, Measured]:
    topic = setup.topic(name)
    keyspace = f"bench_{name}_{setup.run}"
    settings = setup.settings(topic, keyspace)
    view = settings.views[0]
    setup.store(keyspace, view, entity_keys([r.driver_id for r in records], view)).close()
    probe = Probe(produce(setup.endpoints.bootstrap_servers, topic, records))
    daemon = build(settings, serve_metrics=False, extra_events=probe)
    probe.stop = daemon.pipeline.stop
    setup.before_run()
    settle_heap()  # Daemon.run does it again (nothing left to do then): its start-up cost stays out of the CPU
    before = setup.meter.read()
    try:
        daemon.run()
    finally:
        daemon.close()
    spent = Meter.spent(before, setup.meter.read())
    if setup.quiet:  # the seeding store was closed: no session of its own ticks in ours' process meanwhile
        store = setup.connect(keyspace)  # only to drop the keyspace: no schema statements first
        setup.after_run(store)
        store.close()
    assert probe.first is not None and probe.last is not None
    return probe, Measured(len(probe.written()), probe.last - probe.first, spent["client"], spent=spent)


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


def _anchor(setup: Setup, keyspace: str, rows: Sequence[Row],
            measure: Callable[[CassandraStore, FeatureView], Measured]) -> Measured:
    """`measure` on a keyspace of its own seeded with the rows' entities."""
    view = setup.settings("anchor", "unused").views[0]
    store = setup.store(keyspace, view, sorted({row[0] for row in rows}))
    try:
        setup.before_run()
        return measure(store, view)
    finally:
        setup.after_run(store)
        store.close()


def anchor_alone(setup: Setup, name: str, rows: Sequence[Row]) -> Measured:
    """(a) on `rows`."""
    return _anchor(setup, f"bench_{name}_alone_{setup.run}", rows,
                   lambda store, view: writer_alone(store, view, rows, meter=setup.meter))


def anchor_raw(setup: Setup, name: str, rows: Sequence[Row], window: int) -> Measured:
    """(b) on `rows` with `window` requests in flight."""
    return _anchor(setup, f"bench_{name}_raw{window}_{setup.run}", rows,
                   lambda store, view: raw_loop(store.session, store.options.keyspace, view, rows, window,
                                                setup.meter))


def writer_anchors(setup: Setup, name: str, rows: Sequence[Row],
                   windows: Sequence[int]) -> tuple[Measured, list[Measured]]:
    """(a) on `rows`, and (b) with each of `windows` requests in flight."""
    return anchor_alone(setup, name, rows), [anchor_raw(setup, name, rows, w) for w in windows]


def warm_up(setup: Setup, records: int, start_ms: int) -> None:
    """One unreported round of ours, (a) and (b) on `records` uniform records: the JVMs' compilers, the page
    cache and the daemon's first allocations are paid here rather than by whichever candidate runs first."""
    started = time.monotonic()
    data = make_records(records, 1_000_000, None, seed=1, start_ms=start_ms)
    probe, ours = run_ours(setup, "warmup", data)
    writer_anchors(setup, "warmup", probe.written(), [512])
    print(f"warm-up (not counted): {records:,} records, ours {ours.rate:,.0f} writes/s, "
          f"{time.monotonic() - started:.0f} s in all")
    print()


def rounds(setup: Setup, name: str, records: Sequence[Record], rows: Sequence[Row], window: int,
           count: int) -> dict[str, list[Measured]]:
    """Ours, (a) and (b) `count` times each, the order turning each round."""
    measure: dict[str, Callable[[str], Measured]] = {
        "ours": lambda label: run_ours(setup, label, records)[1],
        "alone": lambda label: anchor_alone(setup, label, rows),
        "raw": lambda label: anchor_raw(setup, label, rows, window),
    }
    runs: dict[str, list[Measured]] = {candidate: [] for candidate in measure}
    for turn in range(count):
        order = list(runs)[turn % 3:] + list(runs)[:turn % 3]
        for candidate in order:
            runs[candidate].append(measure[candidate](f"{name}_r{turn}"))
        ours, alone, raw = (runs[c][-1].rate for c in runs)
        print(f"{name} round {turn + 1} ({', '.join(order)}): ours {ours:,.0f}, (a) {alone:,.0f}, (b) {raw:,.0f} "
              "writes/s", file=sys.stderr, flush=True)
    return runs


def throughput(setup: Setup, args: argparse.Namespace, start_ms: int) -> float:
    """Ours, (a) and (b) in `args.rounds` rounds on the same records, the order turning each round; (c) once.

    (b)'s window is chosen first, on a pass of its own: the best of several runs, each as noisy as the
    others, overstates the rate of the window it picks (the winner's curse), so the chosen window is then
    measured afresh in the rounds like the other candidates. Rates are medians over the rounds."""
    windows = [int(w) for w in args.raw_windows.split(",")]
    print("| distribution | ours records/s | ours guarded writes/s | (a) writer alone writes/s | ours / (a) "
          "| (b) raw driver loop writes/s | ours / (b) | per round: ours / (a); ours / (b) | (c) Feast rows/s "
          "| ours / (c) | CPU ms per guarded write: ours / (a) / (b) "
          "| machine CPU ms per guarded write (Cassandra, Kafka): ours / (a) / (b) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
    uniform_rate = 0.0
    setup.quiet, setup.waited = True, []
    for name, entities, zipf_s in [("uniform", args.uniform_entities, None),
                                   ("zipf", args.zipf_entities, args.zipf_s)]:
        records = make_records(args.records, entities, zipf_s, seed=3, start_ms=start_ms)
        probe, _ = run_ours(setup, f"{name}_rows", records)  # the rows the anchors write: the ones ours wrote
        rows = probe.written()
        picks = [anchor_raw(setup, f"{name}_pick", rows, w) for w in windows]
        window = windows[max(range(len(windows)), key=lambda i: picks[i].rate)]
        tried = ", ".join(f"{w}: {m.rate:,.0f}" for w, m in zip(windows, picks, strict=True))
        print(f"{name}: (b)'s window {window} ({tried} writes/s)", file=sys.stderr, flush=True)
        runs = rounds(setup, name, records, rows, window, args.rounds)
        feast = anchor_feast(setup, name, records)
        ours, alone, raw = (median([m.rate for m in runs[c]]) for c in runs)
        records_rate = median([len(records) / m.seconds for m in runs["ours"]])
        if name == "uniform":
            uniform_rate = records_rate
        per_round = "; ".join(", ".join(f"{o.rate / x.rate:.2f}" for o, x in zip(runs["ours"], runs[c], strict=True))
                              for c in ("alone", "raw"))
        totals = [sum(runs[c][1:], runs[c][0]) for c in runs]  # CPU per write over all the rounds
        print(f"| {name} ({entities:,} entities{'' if zipf_s is None else f', s={zipf_s}'}) | {records_rate:,.0f} "
              f"| {ours:,.0f} | {alone:,.0f} | {ours / alone:.2f} | {raw:,.0f} (window {window}) | {ours / raw:.2f} "
              f"| {per_round} | {feast:,.0f} | {records_rate / feast:.2f} "
              f"| {' / '.join(f'{m.cpu_ms_per_row:.2f}' for m in totals)} "
              f"| {' / '.join(_machine(m) for m in totals)} |", flush=True)
    setup.quiet = False
    print()
    print(f"before each run of ours, (a) and (b): waited {median(setup.waited):.1f} s (median; at most "
          f"{max(setup.waited):.1f} s) for the machine to go quiet; each run's keyspace dropped after it")
    print()
    return uniform_rate


def _machine(measured: Measured) -> str:
    """The whole machine's busy CPU per guarded write, and the part Cassandra's and Kafka's processes spent."""
    return (f"{measured.ms_per_row('machine'):.2f} ({measured.ms_per_row('cassandra'):.2f}, "
            f"{measured.ms_per_row('kafka'):.2f})")


def freshness_run(setup: Setup, rate: float, seconds: float) -> dict[str, Any]:
    """Records produced at `rate` per second while the pipeline runs; freshness from inside and outside."""
    topic = setup.topic(f"fresh{int(rate)}")
    keyspace = f"bench_fresh{int(rate)}_{setup.run}"
    settings = setup.settings(topic, keyspace)
    view = settings.views[0]
    entities = 20_000
    setup.store(keyspace, view, entity_keys(range(1, entities + 1), view)).close()
    probe = Probe({})
    daemon = build(settings, serve_metrics=False, extra_events=probe)
    probe.stop = daemon.pipeline.stop
    # Where the machine's CPU went while records were produced: the cores are shared by everything here.
    cpu: dict[str, float] = {}

    # The outside check runs in a process of its own: it shares the cores, not the loop's interpreter.
    outside = subprocess.Popen([sys.executable, "-m", "bench.freshness", setup.endpoints.bootstrap_servers, topic,
                                str(PARTITIONS), setup.endpoints.cql_host, str(setup.endpoints.cql_port), keyspace],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def producer_thread() -> None:
        probe.has_assignment.wait(60)
        assert outside.stdout is not None and outside.stdout.readline().strip() == "ready"
        time.sleep(5)  # let the group settle and Cassandra flush after seeding
        wait_quiet(below_cores=0.4)  # and let the earlier phases' flushes and compactions end
        probe.reset()
        before = setup.meter.read()
        subprocess.run([sys.executable, str(ROOT / "bench" / "produce_at_rate.py"), setup.endpoints.bootstrap_servers,
                        topic, str(rate), str(seconds), str(entities)], check=True, capture_output=True)
        cpu.update(Meter.spent(before, setup.meter.read()))
        ends = {(r.topic, r.partition): r.log_end
                for r in group_lag({"bootstrap.servers": setup.endpoints.bootstrap_servers}, "none", [topic])}
        probe.set_ends(ends)

    thread = threading.Thread(target=producer_thread, daemon=True)
    thread.start()
    try:
        daemon.run()
    finally:
        daemon.close()
    thread.join()
    time.sleep(1)  # the probe's last checks
    outside.send_signal(signal.SIGTERM)
    checked = json.loads(outside.communicate(timeout=30)[0].strip().splitlines()[-1])
    inside = probe.freshness()
    seen = checked["latencies"]
    return {"rate": rate, "rows": len(inside), "p50": percentile(inside, 50), "p99": percentile(inside, 99),
            "p999": percentile(inside, 99.9), "probe_rows": len(seen), "probe_p50": percentile(seen, 50),
            "probe_p99": percentile(seen, 99), "probe_unseen": checked["unseen"],
            "cores": {k: cpu.get(k, float("nan")) / cpu["total"] * (os.cpu_count() or 1)
                      for k in ("machine", "client", "cassandra", "kafka")}}


def paced_floor(setup: Setup, rate: float, seconds: float) -> Paced:
    """The raw driver's guarded writes at `rate`, alone (bench/anchors.raw_paced), on seeded entities."""
    view = setup.settings("anchor_paced", "unused").views[0]
    keys = entity_keys(range(1, int(rate * seconds) + 1), view)
    store = setup.store(f"bench_paced{int(rate)}_{setup.run}", view, keys)
    try:
        time.sleep(5)  # as the freshness run: let Cassandra flush after seeding
        return raw_paced(store.session, store.options.keyspace, view, keys, rate, localstack.service_pid("cassandra"))
    finally:
        store.close()


def anchor_spark(setup: Setup, records: int, rates: Sequence[float], seconds: float) -> dict[str, Any] | None:
    """(d): Feast's Spark Kafka processor on a backlog of `records` records made as ours are, and at each of
    `rates` for `seconds` (bench/feast_spark.py); None when it cannot run here (the reason is printed)."""
    python = feastenv.ensure(spark=True)
    command = [str(python), str(ROOT / "bench" / "feast_spark.py"), "--bootstrap", setup.endpoints.bootstrap_servers,
               "--host", setup.endpoints.cql_host, "--port", str(setup.endpoints.cql_port),
               "--records", str(records), "--seconds", str(seconds), "--partitions", str(PARTITIONS)]
    for rate in rates:
        command += ["--rate", f"{rate:.0f}"]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        print(f"(d) did not run: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
        return None
    return dict(json.loads(lines[-1]))


def rss_run(setup: Setup, records: int, entities: int, zipf_s: float) -> tuple[float, float, float]:
    """(peak RSS MiB, seconds to catch up, records/s) of `feature-consumer run` on a backlog."""
    topic = setup.topic("backlog")
    keyspace = f"bench_backlog_{setup.run}"
    settings = setup.settings(topic, keyspace)
    setup.store(keyspace, settings.views[0]).close()
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
    parser.add_argument("--records", type=int, default=20_000, help="records per distribution")
    parser.add_argument("--uniform-entities", type=int, default=1_000_000)
    parser.add_argument("--zipf-entities", type=int, default=100_000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--raw-windows", default="64,256,512,1024", help="(b): requests in flight tried")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ours, (a) and (b) per distribution")
    parser.add_argument("--fresh-seconds", type=float, default=30.0)
    parser.add_argument("--fresh-fractions", default="0.1,0.5,0.9", help="of the measured uniform rate")
    parser.add_argument("--max-rate", type=float, default=0.0,
                        help="the maximum rate for the freshness phase (default: the measured uniform rate)")
    parser.add_argument("--spark", action="store_true", help="also anchor (d), Feast's Spark Kafka processor")
    parser.add_argument("--rss-records", type=int, default=0, help="also measure peak RSS on this backlog")
    parser.add_argument("--rss-entities", type=int, default=20_000)
    parser.add_argument("--phases", default="throughput,freshness",
                        help="throughput, freshness, rss, contention (bench/contention.py)")
    parser.add_argument("--contention-rounds", type=int, default=3)
    parser.add_argument("--co-tenant-cores", type=float, default=0.375)
    parser.add_argument("--warmup-records", type=int, default=5_000,
                        help="a round of ours, (a) and (b) on this many records first, not counted (0: none)")
    parser.add_argument("--pin-cassandra", action="store_true",
                        help="Cassandra on a core of its own, Kafka and the benchmark on the others (bench/pinning.py)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    endpoints, _ = localstack.up(["kafka", "cassandra"], echo=lambda _: None)
    setup = Setup(endpoints, time.strftime("%H%M%S"), Path(tempfile.mkdtemp(prefix="bench-e2e-")))
    print(f"records={args.records} per distribution, {PARTITIONS} partitions")
    services = {name: pid for name in ("cassandra", "kafka") if (pid := localstack.service_pid(name))}
    with ExitStack() as layout:
        if args.pin_cassandra:
            if len(services) < 2:
                sys.exit("--pin-cassandra: the local stack's Cassandra and Kafka must be running")
            theirs, rest = layout.enter_context(cassandra_alone(services["cassandra"], [services["kafka"]]))
            print(f"Cassandra pinned to core(s) {sorted(theirs)}; Kafka and the benchmark to {sorted(rest)}")
        elif pinned := narrowed(services):
            sys.exit(f"{' and '.join(pinned)} may not use every core (left pinned by a killed benchmark?): "
                     "restart the stack (make stack-down stack-up)")
        print()
        if not run_phases(setup, args):
            sys.exit("anchor (d) did not run (see above)")


def run_phases(setup: Setup, args: argparse.Namespace) -> bool:
    """The phases `args` asks for; False when anchor (d) was asked for and did not run."""
    start_ms = int(time.time() * 1000) - 3_600_000
    phases = set(args.phases.split(",")) | ({"rss"} if args.rss_records else set())
    failed = False
    max_rate = args.max_rate
    if args.warmup_records:
        warm_up(setup, args.warmup_records, start_ms)
    if "throughput" in phases:
        measured = throughput(setup, args, start_ms)
        max_rate = max_rate or measured
    if "freshness" in phases:
        print("| rate | of max | rows | p50 ms | p99 ms | p99.9 ms | probe rows | probe p50 ms | probe p99 ms "
              "| probe unseen | cores busy: all / ours / Cassandra / Kafka | raw driver paced alone: p50 / p99 ms, "
              "Cassandra cores |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for fraction in (float(f) for f in args.fresh_fractions.split(",")):
            r = freshness_run(setup, fraction * max_rate, args.fresh_seconds)
            c = r["cores"]
            floor = paced_floor(setup, fraction * max_rate, min(args.fresh_seconds, 15.0))
            print(f"| {r['rate']:,.0f}/s | {fraction:.0%} | {r['rows']:,} | {r['p50'] * 1000:.1f} "
                  f"| {r['p99'] * 1000:.1f} | {r['p999'] * 1000:.1f} | {r['probe_rows']:,} "
                  f"| {r['probe_p50'] * 1000:.1f} | {r['probe_p99'] * 1000:.1f} | {r['probe_unseen']} "
                  f"| {c['machine']:.2f} / {c['client']:.2f} / {c['cassandra']:.2f} / {c['kafka']:.2f} "
                  f"| {percentile(floor.latencies, 50) * 1000:.1f} / {percentile(floor.latencies, 99) * 1000:.1f}, "
                  f"{floor.cassandra_cores:.2f} |", flush=True)
        print()
    if args.spark:
        rates = [f * max_rate for f in (float(x) for x in args.fresh_fractions.split(","))]
        spark = anchor_spark(setup, args.records, rates, args.fresh_seconds)
        if spark is None:
            failed = True
        else:
            decode = spark.get("backlog", {}).get("decode")  # Feast's own Avro decoding, or the binary value
            print(f"(d) Feast's Spark Kafka processor (pyspark {spark.get('pyspark')}, trigger "
                  f"{spark.get('processing_time')!r}; {decode} decoding): backlog {spark['throughput_rps']:,.0f} "
                  "records/s")
            print("| rate | sustained | p50 ms | p99 ms | p99.9 ms |")
            print("|---:|---:|---:|---:|---:|")
            for run in spark.get("latency", []):
                print(f"| {run['rate']:,.0f}/s | {run['sustained_rps']:,.0f}/s | {run['latency_p50_ms']:,.0f} "
                      f"| {run['latency_p99_ms']:,.0f} | {run['latency_p999_ms']:,.0f} |")
            print()
    if "contention" in phases:
        records = make_records(args.records, args.uniform_entities, None, seed=7, start_ms=start_ms)
        probe, ours = run_ours(setup, "contention", records)
        print(f"ours on {len(records):,} uniform records first (its rows are the anchors'): {ours.rate:,.0f} "
              f"writes/s, CPU ms per write: client {ours.ms_per_row('client'):.3f} / Cassandra "
              f"{ours.ms_per_row('cassandra'):.3f}")
        print()

        def anchors(name: str) -> tuple[Measured, Measured]:
            alone, raws = writer_anchors(setup, name, probe.written(), [512])
            return alone, raws[0]

        contention(anchors, args.contention_rounds, args.co_tenant_cores)
    if "rss" in phases:
        peak, seconds, rate = rss_run(setup, args.rss_records or 1_000_000, args.rss_entities, args.zipf_s)
        print(f"backlog of {args.rss_records or 1_000_000:,} records (Zipf over {args.rss_entities:,} entities): "
              f"caught up in {seconds:.0f} s ({rate:,.0f} records/s), peak RSS {peak:.0f} MiB")
    return not failed


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
