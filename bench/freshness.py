"""Freshness: how long after a record reaches Kafka its values are online, measured two ways.

* From the inside: for every row the daemon wrote, the write's acknowledgement (`WriteReport.done_at`)
  minus the Kafka timestamp of the record it came from.
* From the outside (the check): an independent probe that reads the topic with its own consumer and,
  for a sample of records, reads the entity back from Cassandra every few milliseconds until the row
  holds the record's event time (or a later one); freshness is the time it was first seen minus the
  record's Kafka timestamp. Its resolution is its polling interval.

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
                 view: FeatureView, parsed_schema: Any, sample_every: int = 10, poll_s: float = 0.005) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        self._session = session
        self._select = session.prepare(f"SELECT event_ts FROM {table_name(keyspace, view)} "
                                       "WHERE entity_key = ? AND feature_name = ?")
        self._feature = view.features[0].name
        self._view = view
        self._schema = parsed_schema
        self._sample_every = sample_every
        self._poll_s = poll_s
        self._pending: dict[str, tuple[int, float]] = {}  # entity key -> (event ms, Kafka timestamp s)
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._seen = 0

    def run(self) -> None:
        next_check = time.monotonic()
        while not self.stop.is_set():
            message = self._consumer.poll(0.001)
            self.ready.set()
            if message is not None and message.error() is None:
                self._seen += 1
                if self._seen % self._sample_every == 0:
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
            future = self._session.execute_async(self._select, (key, self._feature))
            future.add_callbacks(self._answered, lambda _e: None, callback_args=(key, event_ms, kafka_s))

    def _answered(self, rows: Any, key: str, event_ms: int, kafka_s: float) -> None:
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

