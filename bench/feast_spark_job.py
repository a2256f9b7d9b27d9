"""The Spark side of anchor (d): Feast 0.67's own Kafka stream ingestion, run by bench/feast_spark.py.

Runs inside the Feast virtualenv with pyspark (`python -m stack.feastenv --spark`), as a process of its own
so that the measuring side (producer, Cassandra poller) does not share its interpreter. Loads the feature
repo bench/feast_spark.py applied, starts a local SparkSession and Feast's `SparkKafkaProcessor` on the
stream feature view, and lets Feast ingest the topic into the online store with its own
`write_to_online_store` per micro-batch, until SIGTERM/SIGINT (or --max-seconds).

Nothing of Feast's is replaced: the store's `write_to_online_store` is only wrapped to note when each call
started and ended (appended to --events as JSON lines, with the query's start and Spark's per-batch progress
from a StreamingQueryListener), so the orchestrator can tell the batches apart from the rows it sees in Cassandra.

    .venv-feast/bin/python bench/feast_spark_job.py --repo DIR --jars a.jar,b.jar --events events.jsonl \\
        --processing-time '0 seconds' --starting-offsets earliest
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import psutil  # noqa: E402
import pyspark  # noqa: E402
from feast import FeatureStore  # noqa: E402
from feast.infra.contrib.spark_kafka_processor import SparkKafkaProcessor, SparkProcessorConfig  # noqa: E402
from feast.infra.contrib.stream_processor import get_stream_processor_object  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql.avro.functions import from_avro  # noqa: E402
from pyspark.sql.functions import col  # noqa: E402
from pyspark.sql.streaming import StreamingQueryListener  # noqa: E402

VIEW = "driver_hourly_stats"


class Events:
    """JSON lines, one per event, flushed at once: the orchestrator reads the file while the job runs."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("a", buffering=1)
        self.lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        with self.lock:
            self.fh.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")


class Progress(StreamingQueryListener):
    """Spark's own report of each micro-batch (trigger start, input rows, phase durations), as it ends."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def onQueryStarted(self, event: Any) -> None:
        self.events.emit("query_started", id=str(event.id))

    def onQueryProgress(self, event: Any) -> None:
        p = json.loads(event.progress.json)
        self.events.emit("batch", batch=p["batchId"], rows=p["numInputRows"], timestamp=p["timestamp"],
                         duration_ms=p.get("durationMs", {}))

    def onQueryIdle(self, event: Any) -> None:
        pass

    def onQueryTerminated(self, event: Any) -> None:
        self.events.emit("query_terminated", exception=event.exception)


class BinaryAvroSparkKafkaProcessor(SparkKafkaProcessor):
    """Feast's processor with one line less: its Avro branch decodes `CAST(value AS STRING)`, which Spark's
    `from_avro` refuses (it takes binary; Spark 4.1: "[INTERNAL_ERROR] Cannot resolve the runtime replaceable
    expression from_avro(...)"), so this reads the same Kafka options and gives the binary value to
    `from_avro`. Everything else (trigger, foreachBatch, toPandas, latest row per entity, `created` = now,
    `write_to_online_store`) is Feast's own code, inherited."""

    def _ingest_stream_data(self) -> DataFrame:
        kafka_options: dict[str, str] = {
            "kafka.bootstrap.servers": self.data_source.kafka_options.kafka_bootstrap_servers,
            "subscribe": self.data_source.kafka_options.topic,
            "startingOffsets": "latest",
        }
        if self.stream_source_options:
            kafka_options.update(self.stream_source_options)
        schema_json = self.data_source.kafka_options.message_format.schema_json
        return (self.spark.readStream.format("kafka").options(**kafka_options).load()
                .select(from_avro(col("value"), schema_json).alias("table")).select("table.*"))


def cpu_seconds(me: psutil.Process) -> dict[str, float]:
    """CPU seconds (user + system) of this interpreter and of its children (the JVM pyspark started)."""
    own = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        children += times.user + times.system
    return {"python": own.user + own.system, "jvm": children}


def spark_session(args: argparse.Namespace) -> SparkSession:
    builder = (SparkSession.builder.master(args.master).appName("feast-spark-kafka-anchor")
               .config("spark.driver.memory", args.driver_memory)
               .config("spark.jars", args.jars)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1"))
    for item in args.conf:
        key, _, value = item.partition("=")
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True, help="the feature repo (feature_store.yaml) applied already")
    parser.add_argument("--jars", required=True, help="comma-separated: Spark's Kafka connector, spark-avro, deps")
    parser.add_argument("--events", required=True, help="JSON lines written here")
    parser.add_argument("--processing-time", default="0 seconds", help="Feast's SparkProcessorConfig.processing_time")
    parser.add_argument("--starting-offsets", default="earliest",
                        help="stream_source_options startingOffsets (Feast's own default is latest)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=0, help="0: Spark's default, no limit")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--conf", action="append", default=[], help="extra Spark setting KEY=VALUE")
    parser.add_argument("--binary-avro", action="store_true",
                        help="skip Feast's own Avro decoding (CAST(value AS STRING)) and decode the binary value")
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args()

    events = Events(Path(args.events))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    store = FeatureStore(repo_path=args.repo)
    sfv = store.get_stream_feature_view(VIEW)
    write = store.write_to_online_store

    def timed_write(feature_view_name: str, df: Any = None, *a: Any, **kw: Any) -> Any:
        started = time.time()
        try:
            return write(feature_view_name, df, *a, **kw)
        finally:
            ended = time.time()
            events.emit("write", start=started, end=ended, rows=0 if df is None else len(df))

    store.write_to_online_store = timed_write  # type: ignore[method-assign]

    started = time.time()
    spark = spark_session(args)
    events.emit("spark", seconds=time.time() - started, spark=spark.version, pyspark=pyspark.__version__,
                master=args.master, arrow=spark.conf.get("spark.sql.execution.arrow.pyspark.enabled"))
    spark.streams.addListener(Progress(events))
    config = SparkProcessorConfig(mode="spark", source="kafka", spark_session=spark,
                                  processing_time=args.processing_time, query_timeout=None)
    options = {"startingOffsets": args.starting_offsets}
    if args.max_offsets_per_trigger:
        options["maxOffsetsPerTrigger"] = str(args.max_offsets_per_trigger)
    # Feast's own factory first; in 0.67 it does not pass the processor's required keyword-only
    # `stream_source_options`, so it raises TypeError: the class is then built directly, as the factory would.
    try:
        processor = get_stream_processor_object(config=config, fs=store, sfv=sfv)
        factory = "get_stream_processor_object"
        processor.stream_source_options = options
    except TypeError as exc:
        events.emit("factory_error", error=f"{type(exc).__name__}: {exc}")
        processor = SparkKafkaProcessor(fs=store, sfv=sfv, config=config, stream_source_options=options)
        factory = "SparkKafkaProcessor"
    # Feast's own Avro decoding, tried as it is (Spark analyses the plan here, before any data); if Spark
    # refuses it, the reason is reported and the processor with the binary value is used instead.
    decode = "feast"
    if not args.binary_avro:
        try:
            processor._ingest_stream_data()
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
            lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("\t")]
            events.emit("feast_decode_error", error=f"{type(exc).__name__}: {' '.join(lines)[:1500]}")
            decode = "binary"
    if args.binary_avro or decode == "binary":
        processor = BinaryAvroSparkKafkaProcessor(fs=store, sfv=sfv, config=config, stream_source_options=options)
        decode = "binary"

    failure: list[str] = []

    def ingest() -> None:
        try:
            processor.ingest_stream_feature_view()  # blocks in query.awaitTermination()
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
            failure.append(f"{type(exc).__name__}: {exc}")
            events.emit("failed", error=failure[-1], trace=traceback.format_exc()[-4000:])
            stop.set()

    thread = threading.Thread(target=ingest, name="feast-ingest", daemon=True)
    thread.start()
    deadline = time.monotonic() + args.max_seconds
    announced = False
    me = psutil.Process()
    next_cpu = 0.0
    while not stop.is_set() and time.monotonic() < deadline:
        if not announced and spark.streams.active:
            events.emit("started", factory=factory, decode=decode, processing_time=args.processing_time,
                        options=options)
            announced = True
        if announced and time.monotonic() >= next_cpu:
            events.emit("cpu", **cpu_seconds(me))
            next_cpu = time.monotonic() + 1
        stop.wait(0.1)
    for query in spark.streams.active:
        query.stop()
    thread.join(30)
    spark.stop()
    events.emit("stopped", failed=bool(failure))


if __name__ == "__main__":
    main()
