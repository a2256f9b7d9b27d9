"""Freshness: how long after a record reaches Kafka its values are online, measured two ways.

* From the inside: for every row the daemon wrote, the write's acknowledgement (`WriteReport.done_at`)
  minus the Kafka timestamp of the record it came from.
* From the outside (the check): an independent probe, in a process of its own, that reads the topic with
  its own consumer and, for a sample of records, reads the entity back from Cassandra every few
  milliseconds until the row holds the record's event time (or a later one); freshness is the time it was
  first seen minus the record's Kafka timestamp. Its resolution is its polling interval; it keeps a
  bounded number of reads in flight, so that it does not load Cassandra more than it measures.

The probe shares the machine with what it measures, so it is kept light. It samples a fixed number of
records per second whatever the rate: with one record in 20, its reads of Cassandra grew with the rate
(at 800 records/s, 40 records a second, each read every 5 ms until seen). Its consumer long-polls, with
librdkafka's default `fetch.wait.max.ms`: a fetch is answered as soon as a record is there, so a shorter
wait only makes the broker answer empty fetches.

    python -m bench.freshness BOOTSTRAP TOPIC PARTITIONS HOST PORT KEYSPACE   # prints "ready", then,
                                                                              # on SIGTERM, one JSON line

Records are produced at a fixed rate by bench/produce_at_rate.py in its own process, event time = the
time of production.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from consumer.cassandra.rounds import millis
from consumer.cassandra.schema import table_name
from consumer.core.views import FeatureView
from consumer.feast.keys import entity_key_hex


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) if samples else float("nan")


class OutsideProbe(threading.Thread):
    """Reads the topic from its end and checks a sample of its records online in Cassandra."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, session: Any, keyspace: str,
                 view: FeatureView, parsed_schema: Any, samples_per_s: float = 10.0, poll_s: float = 0.005,
                 max_reads: int = 16) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False})
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        self._session = session
        self._select = session.prepare(f"SELECT event_ts FROM {table_name(keyspace, view)} "
                                       "WHERE entity_key = ? AND feature_name = ?")
        self._feature = view.features[0].name
        self._view = view
        self._schema = parsed_schema
        self._sample_gap_s = 1 / samples_per_s
        self._next_sample = 0.0  # monotonic seconds
        self._poll_s = poll_s
        self._reads = threading.Semaphore(max_reads)
        self._pending: dict[str, tuple[int, float]] = {}  # entity key -> (event ms, Kafka timestamp s)
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        next_check = time.monotonic()
        while not self.stop.is_set():
            message = self._consumer.poll(self._poll_s / 2)
            self.ready.set()
            if message is not None and message.error() is None and time.monotonic() >= self._next_sample:
                self._next_sample = time.monotonic() + self._sample_gap_s
                self._track(message)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._poll_s
                self._check()
        self._consumer.close()

    def _track(self, message: Any) -> None:
        record = fastavro.schemaless_reader(io.BytesIO(message.value()), self._schema, None)
        key = entity_key_hex(self._view.join_keys, [np.array([record["driver_id"]], dtype=np.int64)], 3)[0]
        _kind, ts_ms = message.timestamp()
        with self._lock:
            self._pending[key] = (record["event_timestamp"] // 1000, ts_ms / 1000)

    def _check(self) -> None:
        with self._lock:
            pending = list(self._pending.items())
        for key, (event_ms, kafka_s) in pending:
            if not self._reads.acquire(blocking=False):
                return  # as many reads in flight as allowed: the rest wait for the next check
            future = self._session.execute_async(self._select, (key, self._feature))
            future.add_callbacks(self._answered, lambda _e: self._reads.release(),
                                 callback_args=(key, event_ms, kafka_s))

    def _answered(self, rows: Any, key: str, event_ms: int, kafka_s: float) -> None:
        self._reads.release()
        now = time.time()
        stored_ms = millis(rows[0]["event_ts"]) if rows else None
        if stored_ms is not None and stored_ms >= event_ms:
            with self._lock:
                if self._pending.get(key, (None,))[0] == event_ms:
                    del self._pending[key]
                    self.latencies.append(now - kafka_s)

    def unresolved(self) -> int:
        with self._lock:
            return len(self._pending)


def main() -> None:
    import json
    import signal
    import sys

    from consumer.cassandra.connection import CassandraOptions
    from consumer.cassandra.writer import CassandraStore
    from consumer.core.views import FeatureView as View
    from stack.example import SCHEMA_PATH, example_view_spec

    bootstrap, topic, partitions, host, port, keyspace = sys.argv[1:7]
    view = View.model_validate(example_view_spec(topic))
    schema = json.loads(SCHEMA_PATH.read_text())
    parsed = fastavro.parse_schema({**schema, "fields": [
        {**f, "type": "long"} if isinstance(f["type"], dict) else f for f in schema["fields"]]})
    store = CassandraStore(CassandraOptions(hosts=(host,), port=int(port), keyspace=keyspace, consistency="ONE"))
    probe = OutsideProbe(bootstrap, topic, int(partitions), store.session, keyspace, view, parsed)
    signal.signal(signal.SIGTERM, lambda *_: probe.stop.set())
    probe.start()
    probe.ready.wait(30)
    print("ready", flush=True)
    probe.join()
    store.close()
    print(json.dumps({"latencies": probe.latencies, "unseen": probe.unresolved()}), flush=True)


if __name__ == "__main__":
    main()
