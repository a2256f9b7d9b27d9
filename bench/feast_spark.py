"""Anchor (d) of the end-to-end benchmark: Feast 0.67's own Kafka stream ingestion, measured here.

Runs inside the Feast virtualenv with pyspark (`python -m stack.feastenv --spark`). Creates a Feast feature repo
in a temporary directory (a StreamFeatureView `driver_hourly_stats` on a KafkaSource with AvroFormat, the
schema of schemas/driver_hourly_stats.avsc, a FileSource as its batch source, a Cassandra online store),
applies it through the SDK, and runs Feast's `SparkKafkaProcessor` (feast.infra.contrib.spark_kafka_processor)
on a local SparkSession in a process of its own (bench/feast_spark_job.py), with Spark's Kafka connector and
spark-avro resolved by Maven from Maven Central (stack/spark/pom.xml) into ~/.cache/feature-consumer-stack.

Feast 0.67 as shipped, on this path (each run reports the first two again in its output):
  - `get_stream_processor_object` raises TypeError (it does not pass SparkKafkaProcessor's required keyword-only
    `stream_source_options`): the processor is built directly, with startingOffsets=earliest;
  - its Avro branch gives `from_avro` the value cast to a string, which Spark 4.1 refuses at analysis ("[INTERNAL_
    ERROR] Cannot resolve the runtime replaceable expression from_avro(...)"; from_avro takes binary): the job
    then runs Feast's processor with that one expression changed to the binary value (feast_spark_job.py), all
    the rest being Feast's (trigger, foreachBatch, toPandas, latest row per entity, write_to_online_store);
  - StreamFeatureView.to_proto stores the entity column among the features, so the view read back from the
    registry writes driver_id as a fourth online row per entity (online_rows_per_entity);
  - the Spark checkpoint is always /tmp/checkpoint/: removed before each run (two runs cannot share a machine).

Two measurements, either or both:

  --records N              a backlog of N records on the topic (produced here first, uniform over --entities
                           as bench/e2e.py makes them, or already there with --existing-topic): records/s
                           from the first micro-batch's trigger to the last row visible in Cassandra (an
                           independent COUNT(*) poller), and from the first row visible to the last;
  --rate R --seconds S     records produced here at R/s for S s (event time = time of production) while the
                           processor runs: event-to-online latency p50/p99/p99.9, from each record's event time
                           to the time an independent poller, reading the rows back by entity key, sees its
                           version (or a newer one) in Cassandra; Cassandra's WRITETIME of the rows gives a
                           second figure (when Feast issued the write), without the poller's delay.

Prints one JSON line at the end:
  pyspark, spark, spark_jars, master, driver_memory, processing_time (the trigger), max_offsets_per_trigger,
  arrow_to_pandas, keyspace, table, cpus, loadavg_start/loadavg_end (a shared machine: how busy it was);
  throughput_rps (= backlog.throughput_rps) and backlog: records, entities, online_rows(_per_entity),
    throughput_rps (records / first trigger -> last row online), throughput_visible_rps (first row online ->
    last), throughput_after_first_batch_rps (several batches only), job_cpu_s and job_cpu_ms_per_record (CPU of
    the processor's Python and JVM), spark_session_s, batches and their phases (batch_*, feast_write_*,
    first_batches), how Feast's processor was built (factory, decode, factory_error, feast_decode_error);
  latency: one object per --rate: records, seen, missing, sustained_rps (below the rate: it did not keep up),
    latency_p50_ms/p99/p999/max (poller),
    writetime_p50_ms/... (Cassandra's write time of each entity's last record), poll_cycle_ms_median (the
    poller's resolution), job_cpu_cores (cores the processor kept busy), the batches as above.

    .venv/bin/python -m stack.feastenv --spark      # once: pyspark into .venv-feast
    .venv-feast/bin/python bench/feast_spark.py --records 20000
    .venv-feast/bin/python bench/feast_spark.py --rate 100 --rate 500 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import fastavro  # noqa: E402
import numpy as np  # noqa: E402
from cassandra.cluster import Cluster, Session  # noqa: E402
from cassandra.concurrent import execute_concurrent_with_args  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from feast import Entity, FeatureStore, Field, FileSource, KafkaSource, StreamFeatureView, ValueType  # noqa: E402
from feast.data_format import AvroFormat  # noqa: E402
from feast.infra.key_encoding_utils import serialize_entity_key  # noqa: E402
from feast.protos.feast.types.EntityKey_pb2 import EntityKey  # noqa: E402
from feast.protos.feast.types.Value_pb2 import Value  # noqa: E402
from feast.types import Float32, Int64  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_JSON = (ROOT / "schemas" / "driver_hourly_stats.avsc").read_text()
SCHEMA = json.loads(SCHEMA_JSON)
PARSED = fastavro.parse_schema({**SCHEMA, "fields": [
    {**f, "type": "long"} if isinstance(f["type"], dict) else f for f in SCHEMA["fields"]]})
POM = ROOT / "stack" / "spark" / "pom.xml"
JOB = ROOT / "bench" / "feast_spark_job.py"
PROJECT = "feast_bench"
VIEW = "driver_hourly_stats"
# Feast 0.67's SparkKafkaProcessor writes its Spark checkpoint to this fixed path (no option changes it).
FEAST_CHECKPOINT = Path("/tmp/checkpoint")


def log(message: str) -> None:
    print(f"[feast_spark] {message}", file=sys.stderr, flush=True)


# ---- Spark's Kafka connector from Maven Central ----------------------------------------------------------

def jar_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "feature-consumer-stack" / "spark-jars"
    return base / hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def spark_jars() -> list[str]:
    """The connector's jars (resolved once per pom), less those pyspark ships in its own jars/ directory."""
    import pyspark

    wanted = re.search(r"<spark.version>([^<]+)</spark.version>", POM.read_text())
    if wanted is None or wanted.group(1) != pyspark.__version__:
        raise SystemExit(f"{POM} resolves Spark {wanted and wanted.group(1)}'s connector but pyspark is "
                         f"{pyspark.__version__}: they must be the same version")
    target = jar_cache()
    listing = target / "dependencies.txt"
    if not listing.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise SystemExit("mvn was not found on PATH: Spark's Kafka connector is resolved with Maven")
        log(f"resolving Spark's Kafka connector and spark-avro with Maven into {target}")
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "dependency:list",
                               f"-DoutputDirectory={target}", f"-DoutputFile={listing}.tmp",
                               "-DincludeScope=runtime", "-DexcludeTransitive=false"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"Maven could not resolve {POM}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        Path(f"{listing}.tmp").rename(listing)
    shipped = [p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")]
    jars = []
    for line in listing.read_text().splitlines():
        m = re.match(r"^\s*([\w.\-]+):([\w.\-]+):jar:([\w.\-]+):(compile|runtime)", line)
        if m is None:
            continue
        artifact, version = m.group(2), m.group(3)
        if any(re.fullmatch(re.escape(artifact) + r"-\d.*\.jar", name) for name in shipped):
            continue  # pyspark's own copy wins anyway (parent-first class loading): do not pass a second one
        path = target / f"{artifact}-{version}.jar"
        if not path.exists():
            raise SystemExit(f"{path} is missing: remove {target} to resolve again")
        jars.append(str(path))
    return sorted(jars)


# ---- Kafka -------------------------------------------------------------------------------------------------

def encode(driver: int, event_us: int, conv: float, acc: float, trips: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, {"driver_id": driver, "event_timestamp": event_us, "created": event_us,
                                             "conv_rate": conv, "acc_rate": acc, "avg_daily_trips": trips})
    return buf.getvalue()


CREATED_TOPICS: list[str] = []


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    CREATED_TOPICS.append(topic)
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) == partitions:
            return
        time.sleep(0.2)
    raise SystemExit(f"topic {topic} did not appear with {partitions} partitions")


def produce_backlog(bootstrap: str, topic: str, n: int, entities: int, seed: int) -> set[int]:
    """bench/e2e.py's uniform records: ids drawn without replacement while n <= entities, event time in ms steps."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(entities, size=n, replace=n > entities) + 1
    conv, acc, trips = rng.random(n), rng.random(n), rng.integers(0, 1000, n)
    start_ms = int(time.time() * 1000) - n
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    for i in range(n):
        driver = int(ids[i])
        producer.produce(topic, key=str(driver).encode(),
                         value=encode(driver, (start_ms + i) * 1000, float(conv[i]), float(acc[i]), int(trips[i])))
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise SystemExit("the backlog was not all delivered to Kafka")
    return {int(i) for i in ids}


def read_topic(bootstrap: str, topic: str) -> tuple[int, set[int]]:
    """(records, distinct driver ids) of a topic already filled, e.g. by the main benchmark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"feast-spark-count-{os.getpid()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {}
    for p in meta.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    ids: set[int] = set()
    count = 0
    done: set[int] = set()
    while len(done) < len(ends):
        for msg in consumer.consume(10_000, timeout=5):
            if msg.error():
                continue
            count += 1
            ids.add(fastavro.schemaless_reader(io.BytesIO(msg.value()), PARSED)["driver_id"])
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    consumer.close()
    return count, ids


# ---- the Feast repo and the online table -------------------------------------------------------------------

@dataclass
class Target:
    bootstrap: str
    host: str
    port: int
    keyspace: str
    write_concurrency: int

    @property
    def table(self) -> str:
        return f'"{self.keyspace}"."{PROJECT}_{VIEW}"'


def feature_repo(target: Target, topic: str, directory: Path) -> tuple[Path, int]:
    """Write feature_store.yaml and apply the entity and the stream feature view through the SDK; return the repo
    and how many online rows Feast writes per entity (the features of the view as the registry gives it back)."""
    directory.mkdir(parents=True)
    config = {
        "project": PROJECT, "registry": str(directory / "registry.db"), "provider": "local",
        "online_store": {"type": "cassandra", "hosts": [target.host], "port": target.port,
                         "keyspace": target.keyspace, "protocol_version": 5,
                         "write_concurrency": target.write_concurrency},
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    (directory / "feature_store.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    store = FeatureStore(repo_path=str(directory))
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    batch = FileSource(name="driver_hourly_stats_batch", path=str(directory / "unused.parquet"),
                       timestamp_field="event_timestamp", created_timestamp_column="created")
    stream = KafkaSource(name="driver_hourly_stats_stream", kafka_bootstrap_servers=target.bootstrap, topic=topic,
                         timestamp_field="event_timestamp", created_timestamp_column="created",
                         message_format=AvroFormat(SCHEMA_JSON), batch_source=batch)
    view = StreamFeatureView(
        name=VIEW, entities=[driver], ttl=timedelta(days=1), mode="spark", timestamp_field="event_timestamp",
        # The features only, as bench/feast_writer.py: a driver_id field here would be written as a fourth feature.
        schema=[Field(name="conv_rate", dtype=Float32), Field(name="acc_rate", dtype=Float32),
                Field(name="avg_daily_trips", dtype=Int64)],
        source=stream, online=True,
    )
    store.apply([driver, view])
    # Feast 0.67's StreamFeatureView.to_proto stores its whole schema, the entity column included, as features:
    # read back from the registry (as the processor reads it), the view has driver_id as a fourth feature, and
    # write_to_online_store writes a row for it too.
    applied = store.get_stream_feature_view(VIEW)
    return directory, len(applied.features)


def connect(target: Target) -> tuple[Cluster, Session]:
    cluster = Cluster([target.host], port=target.port, protocol_version=5)
    session = cluster.connect()
    session.default_timeout = 60
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS \"{target.keyspace}\" WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    return cluster, session


def entity_key_hex(driver: int) -> str:
    key = EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=driver)])
    return serialize_entity_key(key, entity_key_serialization_version=3).hex()


# ---- the Spark job -------------------------------------------------------------------------------------------

@dataclass
class Job:
    proc: subprocess.Popen[bytes]
    events_path: Path
    log_path: Path
    seen: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        complete = lines if self.events_path.read_text().endswith("\n") else lines[:-1]
        new = [json.loads(line) for line in complete[self.seen:]]
        self.seen = len(complete)
        self.events.extend(new)
        return new

    def first(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    def check(self) -> None:
        self.poll()
        failed = self.first("failed")
        if failed is not None:
            raise SystemExit(f"Feast's Spark Kafka processor failed: {failed['error']}\n{failed.get('trace', '')}"
                             f"\n--- job log tail ---\n{self.tail()}")
        if self.proc.poll() is not None and self.first("stopped") is None:
            raise SystemExit(f"the Spark job exited with {self.proc.returncode}\n--- job log tail ---\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def wait_for(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            event = self.first(name)
            if event is not None:
                return event
            time.sleep(0.1)
        raise SystemExit(f"the Spark job did not report '{name}' within {timeout:.0f} s\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the job and the JVM it started, nothing else
                self.proc.wait(10)
        self.poll()


def start_job(args: argparse.Namespace, repo: Path, jars: Sequence[str], workdir: Path, name: str) -> Job:
    # Feast's processor always checkpoints to /tmp/checkpoint/; a checkpoint left by an earlier query (another
    # topic) would make this one resume from it, so each run starts without one.
    shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)
    events, log_path = workdir / f"{name}.events.jsonl", workdir / f"{name}.log"
    command = [sys.executable, str(JOB), "--repo", str(repo), "--jars", ",".join(jars), "--events", str(events),
               "--processing-time", args.processing_time, "--starting-offsets", "earliest",
               "--max-offsets-per-trigger", str(args.max_offsets_per_trigger), "--master", args.master,
               "--driver-memory", args.driver_memory, *(["--binary-avro"] if args.binary_avro else [])]
    for conf in args.conf:
        command += ["--conf", conf]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Job(proc, events, log_path)


def batch_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def as_shipped(job: Job) -> dict[str, Any]:
    """How Feast's processor was built: by Feast's factory or directly, with Feast's Avro decoding or the binary
    value (and why)."""
    started = job.first("started") or {}
    factory_error, decode_error = job.first("factory_error"), job.first("feast_decode_error")
    return {"factory": started.get("factory"), "decode": started.get("decode"),
            "factory_error": factory_error and factory_error["error"],
            "feast_decode_error": decode_error and decode_error["error"]}


def cpu_between(job: Job, start: float, end: float) -> dict[str, float] | None:
    """CPU seconds the job (its Python and its JVM) used between two times, from its once-a-second samples: the
    last sample at or before `start` and the first at or after `end`."""
    samples = [e for e in job.events if e["event"] == "cpu"]
    before = [e for e in samples if e["t"] <= start] or samples[:1]
    after = [e for e in samples if e["t"] >= end] or samples[-1:]
    if not before or not after:
        return None
    a, b = before[-1], after[0]
    return {"python": b["python"] - a["python"], "jvm": b["jvm"] - a["jvm"], "wall": b["t"] - a["t"]}


def batches_summary(job: Job, since: float = 0.0) -> dict[str, Any]:
    """Spark's micro-batches with input (triggered at or after `since`), each with Feast's write_to_online_store
    call in it: the time from the trigger to the write (Kafka fetch, from_avro, toPandas, Feast's latest row per
    entity) and the write."""
    batches = [e for e in job.events if e["event"] == "batch" and e["rows"] > 0 and batch_time(e) >= since]
    writes = [e for e in job.events if e["event"] == "write" and e["start"] >= since]
    detail = []
    for batch, write in zip(batches, writes, strict=False):
        detail.append({"rows": batch["rows"], "trigger_ms": batch["duration_ms"].get("triggerExecution"),
                       "before_write_ms": round((write["start"] - batch_time(batch)) * 1000),
                       "write_ms": round((write["end"] - write["start"]) * 1000), "written": write["rows"]})

    def median(key: str) -> float | None:
        values = [d[key] for d in detail if d[key] is not None]
        return statistics.median(values) if values else None

    return {
        "batches": len(batches),
        "batch_rows_median": statistics.median([e["rows"] for e in batches]) if batches else None,
        "batch_rows_max": max((e["rows"] for e in batches), default=None),
        "batch_trigger_ms_median": median("trigger_ms"),
        "batch_before_write_ms_median": median("before_write_ms"),
        "batch_write_ms_median": median("write_ms"),
        "feast_write_calls": len(writes),
        "feast_write_rows": sum(e["rows"] for e in writes),
        "feast_write_seconds": sum(e["end"] - e["start"] for e in writes),
        "first_batches": detail[:5],
    }


# ---- measurements ----------------------------------------------------------------------------------------------

def wait_visible_count(session: Session, target: Target, expected_rows: int, job: Job, timeout: float,
                       interval: float) -> tuple[float, float, int]:
    """(time of the first row seen, time all expected rows were seen, rows) by polling COUNT(*)."""
    statement = f"SELECT COUNT(*) FROM {target.table}"
    first = None
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        job.check()
        try:
            rows = session.execute(statement, timeout=60).one()[0]
        except Exception as exc:  # noqa: BLE001 - the table appears with `apply`; a slow count is retried
            log(f"count failed ({type(exc).__name__}), retrying")
            rows = 0
        now = time.time()
        if rows and first is None:
            first = now
        if rows >= expected_rows:
            assert first is not None
            return first, now, rows
        time.sleep(interval)
    raise SystemExit(f"only {rows} of {expected_rows} rows were online after {timeout:.0f} s\n{job.tail()}")


def wait_for_quiet(max_load: float, patience: float) -> None:
    """On a shared machine: wait (at most `patience` s) until the 1-minute load average is below `max_load`."""
    deadline = time.monotonic() + patience
    while max_load and os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        log(f"load average {os.getloadavg()[0]:.1f} >= {max_load:g}: waiting")
        time.sleep(15)


def throughput_run(args: argparse.Namespace, target: Target, session: Session, jars: Sequence[str],
                   workdir: Path) -> dict[str, Any]:
    if args.existing_topic:
        topic = args.existing_topic
        records, ids = read_topic(target.bootstrap, topic)
    else:
        topic = f"{args.topic_prefix}_backlog_{args.run}"
        create_topic(target.bootstrap, topic, args.partitions)
        log(f"producing {args.records:,} records to {topic}")
        ids = produce_backlog(target.bootstrap, topic, args.records, args.entities, seed=3)
        records = args.records
    repo, per_entity = feature_repo(target, topic, workdir / "repo_backlog")
    session.execute(f"TRUNCATE {target.table}")
    wait_for_quiet(args.max_load, args.max_load_wait)
    load = os.getloadavg()
    expected = len(ids) * per_entity  # one row per (entity, feature)
    log(f"{records:,} records ({len(ids):,} entities) on {topic}; starting Feast's Spark Kafka processor")
    job = start_job(args, repo, jars, workdir, "backlog")
    try:
        started = job.wait_for("started", args.start_timeout)
        first_visible, last_visible, rows = wait_visible_count(session, target, expected, job, args.timeout,
                                                               args.count_interval)
        deadline = time.monotonic() + 30  # the listener's report of the batch comes after its commit
        while time.monotonic() < deadline and sum(e["rows"] for e in job.events if e["event"] == "batch") < records:
            job.check()
            time.sleep(0.2)
    finally:
        job.stop()
    spark_event = job.first("spark") or {}
    batches = [e for e in job.events if e["event"] == "batch" and e["rows"] > 0]
    first_trigger = min(batch_time(e) for e in batches) if batches else started["t"]
    writes = [e for e in job.events if e["event"] == "write"]
    # With --max-offsets-per-trigger the backlog comes in several batches: the rate after the first one (which
    # also plans the query, opens the Kafka consumer and Feast's Cassandra session) is the steady one.
    steady = None
    if len(batches) > 1 and writes and last_visible > writes[0]["end"]:
        steady = (records - batches[0]["rows"]) / (last_visible - writes[0]["end"])
    cpu = cpu_between(job, first_trigger, last_visible)
    return {
        "topic": topic, "records": records, "entities": len(ids), "online_rows": rows,
        "online_rows_per_entity": per_entity, "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
        "throughput_rps": records / (last_visible - first_trigger),
        "throughput_visible_rps": records / (last_visible - first_visible) if last_visible > first_visible else None,
        "throughput_after_first_batch_rps": steady,
        # CPU the processor used (Python driver + JVM) from the first trigger to the last row: less sensitive to
        # other work on a shared machine than the wall-clock rates.
        "job_cpu_s": cpu, "job_cpu_ms_per_record": cpu and (cpu["python"] + cpu["jvm"]) * 1000 / records,
        "first_trigger_to_last_row_s": last_visible - first_trigger,
        "first_row_to_last_row_s": last_visible - first_visible,
        "spark_session_s": spark_event.get("seconds"),
        "query_start_to_last_row_s": last_visible - started["t"],
        **as_shipped(job),
        **batches_summary(job),
    }


@dataclass
class LatencyProbe:
    """Records produced (by entity), and when the poller first saw each one's version, or a newer one, online."""

    keys: dict[int, str] = field(default_factory=dict)
    pending: dict[int, list[int]] = field(default_factory=dict)  # driver -> event_us not yet seen
    produced: list[tuple[int, int]] = field(default_factory=list)  # (driver, event_us)
    latencies_ms: list[float] = field(default_factory=list)
    last_seen: float = 0.0  # when the poller last saw a record online
    rounds_ms: list[float] = field(default_factory=list)
    cycles_ms: list[float] = field(default_factory=list)  # round + pause: how late a row may be seen at most
    lock: threading.Lock = field(default_factory=threading.Lock)
    producing_done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def add(self, driver: int, event_us: int) -> None:
        key = self.keys.get(driver)
        if key is None:
            self.keys[driver] = entity_key_hex(driver)
        with self.lock:
            self.pending.setdefault(driver, []).append(event_us)
            self.produced.append((driver, event_us))

    def outstanding(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.pending.values())


def produce_at_rate(bootstrap: str, topic: str, rate: float, seconds: float, entities: int, probe: LatencyProbe,
                    base: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    rng = np.random.default_rng(5)
    total = int(rate * seconds)
    started = time.monotonic()
    for i in range(total):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        driver = base + int(rng.integers(1, entities + 1))
        event_us = int(time.time() * 1_000_000)
        producer.produce(topic, key=str(driver).encode(), value=encode(driver, event_us, 0.5, 0.5, i))
        probe.add(driver, event_us)
        producer.poll(0)
    producer.flush(60)


def poll_online(session: Session, target: Target, probe: LatencyProbe, concurrency: int, interval: float,
                budget: float = 0.0) -> None:
    """Read back every entity with a record not yet seen; a record counts as online once its entity's row holds
    its event time or a later one (Feast writes the latest record of each entity in a micro-batch). Rounds are
    spaced so that the reads stay below `budget` per second (0: no bound): the poller's reads go to the Cassandra
    node Feast writes to, on the same cores, and must not slow it much."""
    select = session.prepare(f"SELECT toUnixTimestamp(event_ts) FROM {target.table} "
                             "WHERE entity_key = ? AND feature_name = 'avg_daily_trips'")
    while not probe.stop.is_set():
        with probe.lock:
            drivers = list(probe.pending)
        if not drivers:
            if probe.producing_done.is_set():
                return
            time.sleep(0.005)
            continue
        began = time.time()
        results = execute_concurrent_with_args(session, select, [(probe.keys[d],) for d in drivers],
                                               concurrency=concurrency, raise_on_first_error=False,
                                               results_generator=True)
        for driver, (ok, result) in zip(drivers, results, strict=True):
            seen = time.time()
            row = result.one() if ok else None
            if row is None:
                continue
            online_ms = row[0]
            with probe.lock:
                waiting = probe.pending.get(driver, [])
                done = [e for e in waiting if e // 1000 <= online_ms]
                if done:
                    probe.latencies_ms.extend(seen * 1000 - e / 1000 for e in done)
                    probe.last_seen = seen
                    rest = [e for e in waiting if e // 1000 > online_ms]
                    if rest:
                        probe.pending[driver] = rest
                    else:
                        del probe.pending[driver]
        elapsed = time.time() - began
        probe.rounds_ms.append(elapsed * 1000)
        pause = max(interval, len(drivers) / budget - elapsed if budget else 0.0)
        probe.cycles_ms.append((elapsed + max(pause, 0.0)) * 1000)
        if pause > 0:
            probe.stop.wait(pause)


def writetime_latencies(session: Session, target: Target, probe: LatencyProbe) -> list[float]:
    """For the last record of each entity: Cassandra's write time of its row minus its event time (ms)."""
    last: dict[int, int] = {}
    for driver, event_us in probe.produced:
        last[driver] = max(event_us, last.get(driver, 0))
    select = session.prepare(f"SELECT toUnixTimestamp(event_ts), WRITETIME(value) FROM {target.table} "
                             "WHERE entity_key = ? AND feature_name = 'avg_daily_trips'")
    drivers = list(last)
    results = execute_concurrent_with_args(session, select, [(probe.keys[d],) for d in drivers], concurrency=64,
                                           raise_on_first_error=False, results_generator=True)
    out = []
    for driver, (ok, result) in zip(drivers, results, strict=True):
        row = result.one() if ok else None
        if row is not None and row[0] == last[driver] // 1000:
            out.append(row[1] / 1000 - last[driver] / 1000)
    return out


def percentiles(samples: list[float], prefix: str) -> dict[str, float | None]:
    ordered = sorted(samples)

    def at(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else None

    return {f"{prefix}p50_ms": at(0.5), f"{prefix}p99_ms": at(0.99), f"{prefix}p999_ms": at(0.999),
            f"{prefix}max_ms": ordered[-1] if ordered else None}


def latency_run(args: argparse.Namespace, target: Target, session: Session, jars: Sequence[str], workdir: Path,
                rate: float) -> dict[str, Any]:
    topic = f"{args.topic_prefix}_latency_{int(rate)}_{args.run}"
    create_topic(target.bootstrap, topic, args.partitions)
    repo, _ = feature_repo(target, topic, workdir / f"repo_latency_{int(rate)}")
    session.execute(f"TRUNCATE {target.table}")
    wait_for_quiet(args.max_load, args.max_load_wait)
    load = os.getloadavg()
    job = start_job(args, repo, jars, workdir, f"latency_{int(rate)}")
    probe = LatencyProbe()
    try:
        job.wait_for("started", args.start_timeout)
        # Warm-up, not measured: the first micro-batch also opens Feast's Cassandra session and prepares its
        # statement (as bench/feast_writer.py warms up); entities above the measured range.
        warm = LatencyProbe()
        warm_poller = threading.Thread(target=poll_online, args=(session, target, warm, 8, 0.05), daemon=True)
        warm_poller.start()
        produce_at_rate(target.bootstrap, topic, 20, 1, 10, warm, base=args.entities)
        warm.producing_done.set()
        deadline = time.monotonic() + args.start_timeout
        while warm.outstanding() and time.monotonic() < deadline:
            job.check()
            time.sleep(0.1)
        warm.stop.set()
        warm_poller.join()
        if warm.outstanding():
            raise SystemExit(f"the warm-up records were not online within {args.start_timeout:.0f} s\n{job.tail()}")
        time.sleep(2)
        log(f"warm; producing {rate:g} records/s for {args.seconds:g} s to {topic}")
        poller = threading.Thread(target=poll_online, args=(session, target, probe, args.poll_concurrency,
                                                            args.poll_interval, args.poll_budget), daemon=True)
        poller.start()
        produce_started = time.time()
        produce_at_rate(target.bootstrap, topic, rate, args.seconds, args.entities, probe)
        produce_ended = time.time()
        probe.producing_done.set()
        deadline = time.monotonic() + args.drain_timeout
        while probe.outstanding() and time.monotonic() < deadline:
            job.check()
            time.sleep(0.1)
        probe.stop.set()
        poller.join(60)
        time.sleep(1)
        job.poll()
    finally:
        probe.stop.set()
        job.stop()
    written = writetime_latencies(session, target, probe)
    cpu = cpu_between(job, produce_started, produce_ended)
    return {
        "topic": topic, "rate": rate, "seconds": args.seconds, "records": len(probe.produced),
        "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(),
        "entities": args.entities, "seen": len(probe.latencies_ms), "missing": probe.outstanding(),
        # records / (first produced -> last seen online): below `rate` when the processor did not keep up, and
        # then the latencies grow with the length of the run
        "sustained_rps": len(probe.produced) / (probe.last_seen - produce_started) if probe.last_seen else None,
        **percentiles(probe.latencies_ms, "latency_"),
        "writetime_samples": len(written), **percentiles(written, "writetime_"),
        "poll_round_ms_median": statistics.median(probe.rounds_ms) if probe.rounds_ms else None,
        "poll_cycle_ms_median": statistics.median(probe.cycles_ms) if probe.cycles_ms else None,
        "poll_rounds": len(probe.rounds_ms), "poll_budget": args.poll_budget,
        # cores the processor kept busy (Python driver + JVM) while the records were produced
        "job_cpu_s": cpu, "job_cpu_cores": cpu and (cpu["python"] + cpu["jvm"]) / cpu["wall"],
        **as_shipped(job),
        **batches_summary(job, since=produce_started),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keyspace", default=None, help="default: bench_feast_spark_<run>; created if missing")
    parser.add_argument("--records", type=int, default=0, help="backlog throughput run with this many records")
    parser.add_argument("--existing-topic", default=None,
                        help="backlog run on this topic as it is (e.g. the main benchmark's), producing nothing")
    parser.add_argument("--rate", type=float, action="append", default=[],
                        help="latency run at this many records/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=30, help="latency run: seconds of production")
    parser.add_argument("--entities", type=int, default=0,
                        help="entities drawn from (default: 1,000,000 for the backlog, 20,000 for latency)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--topic-prefix", default="feast_spark")
    parser.add_argument("--processing-time", default="0 seconds",
                        help="Feast's SparkProcessorConfig.processing_time (Spark's processing-time trigger)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=0, help="0: no limit (Spark's default)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--conf", action="append", default=[], help="extra Spark setting KEY=VALUE (repeatable)")
    parser.add_argument("--binary-avro", action="store_true",
                        help="do not try Feast's own Avro decoding first (it fails on Spark 4, see feast_spark_job.py)")
    parser.add_argument("--write-concurrency", type=int, default=100, help="Feast's Cassandra write_concurrency")
    parser.add_argument("--poll-concurrency", type=int, default=32)
    parser.add_argument("--poll-interval", type=float, default=0.0, help="latency poller: pause between rounds")
    parser.add_argument("--poll-budget", type=float, default=2000,
                        help="latency poller: at most this many reads per second on average (0: no bound)")
    parser.add_argument("--count-interval", type=float, default=1.0,
                        help="backlog poller: pause between COUNT(*)s (each is a scan the writes compete with)")
    parser.add_argument("--start-timeout", type=float, default=180)
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--timeout", type=float, default=900, help="backlog run: seconds until all rows are online")
    parser.add_argument("--max-load", type=float, default=0,
                        help="before each run, wait until the 1-minute load average is below this (0: do not wait)")
    parser.add_argument("--max-load-wait", type=float, default=600, help="seconds to wait for --max-load at most")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (repos, job logs), the topics and the keyspace")
    args = parser.parse_args(argv)
    if not args.records and not args.existing_topic and not args.rate:
        parser.error("nothing to measure: give --records N, --existing-topic T and/or --rate R")
    args.run = time.strftime("%Y%m%d%H%M%S")
    keyspace = args.keyspace or f"bench_feast_spark_{args.run}"
    target = Target(args.bootstrap, args.host, args.port, keyspace, args.write_concurrency)

    import pyspark

    jars = spark_jars()
    log(f"pyspark {pyspark.__version__}; connector jars: {', '.join(Path(j).name for j in jars)}")
    workdir = Path(tempfile.mkdtemp(prefix="feast-spark-"))
    cluster, session = connect(target)
    result: dict[str, Any] = {
        "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "pyspark": pyspark.__version__,
        "spark_jars": [Path(j).name for j in jars], "master": args.master,
        "driver_memory": args.driver_memory, "processing_time": args.processing_time,
        "max_offsets_per_trigger": args.max_offsets_per_trigger or None, "keyspace": keyspace,
        "table": target.table,
    }
    try:
        if args.records or args.existing_topic:
            entities = args.entities or 1_000_000
            backlog_args = argparse.Namespace(**{**vars(args), "entities": entities})
            result["backlog"] = throughput_run(backlog_args, target, session, jars, workdir)
            log(f"backlog: {json.dumps(result['backlog'])}")
        for rate in args.rate:
            entities = args.entities or 20_000
            rate_args = argparse.Namespace(**{**vars(args), "entities": entities})
            result.setdefault("latency", []).append(latency_run(rate_args, target, session, jars, workdir, rate))
            log(f"latency: {json.dumps(result['latency'][-1])}")
        spark_events = [e for e in _all_events(workdir) if e["event"] == "spark"]
        result["spark"] = ", ".join(sorted({e["spark"] for e in spark_events}))
        result["arrow_to_pandas"] = ", ".join(sorted({str(e.get("arrow")) for e in spark_events}))
        if "backlog" in result:
            result["throughput_rps"] = result["backlog"]["throughput_rps"]
        result["loadavg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(FEAST_CHECKPOINT, ignore_errors=True)
        if args.keep:
            log(f"kept {workdir}, the keyspace {keyspace} and the topics {', '.join(CREATED_TOPICS)}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            # what this run created: the topics, and the keyspace unless --keyspace named one
            with contextlib.suppress(Exception):
                if not args.keyspace:
                    session.execute(f'DROP KEYSPACE IF EXISTS "{keyspace}"', timeout=120)
            if CREATED_TOPICS:
                admin = AdminClient({"bootstrap.servers": target.bootstrap})
                for future in admin.delete_topics(CREATED_TOPICS).values():
                    with contextlib.suppress(Exception):
                        future.result(30)
        cluster.shutdown()
    print(json.dumps(result))


def _all_events(workdir: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(workdir.glob("*.events.jsonl")):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    yield json.loads(line)


if __name__ == "__main__":
    main()
