"""Prometheus metrics: the series, fed by the loop's events and by the lag collector (lag.py).

Lag, per assigned partition:

* `feature_consumer_lag_offsets` = log end offset - committed offset. The log end offset is asked of the
  brokers every `metrics.lag_interval_s` (cached watermarks go stale for paused or idle partitions);
  the committed offset is the one this process committed (or found committed when it got the partition;
  with none, where `auto.offset.reset` makes it start).
* `feature_consumer_lag_seconds` = 0 when the lag in offsets is 0; otherwise the age of the oldest record
  not yet committed, by its Kafka timestamp, if this process has read it (it is buffered or being
  written); before it has, the time since the partition was last caught up. An idle, caught-up
  partition reads 0; a stuck one grows with wall time.

The log end used is the larger of the brokers' answer and the offset after the last record read, so a
partition whose records are read but not yet committed never reads lag 0 between two collections.

A partition this process no longer owns is no longer reported by it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.core.errors import TransientError
from consumer.core.records import Message, Rejected
from consumer.core.store import RowStatus, WriteReport
from consumer.decode.assemble import Batch
from consumer.decode.coalesce import ViewBatch
from consumer.events import Events
from consumer.kafka.source import TP
from consumer.observe.histogram import BatchHistogram

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
FRESHNESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
                     21600, 86400)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)


class Metrics(Events):
    """Listens to the loop and keeps the Prometheus series; thread-safe for the scrape and collector."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 views_by_topic: Mapping[str, list[str]] | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self._lock = threading.Lock()
        self._views_by_topic = dict(views_by_topic or {})
        r = self.registry
        p = ("topic", "partition")
        self.m_lag_offsets = Gauge("feature_consumer_lag_offsets", "Log end offset minus committed offset", p,
                                 registry=r)
        self.m_lag_seconds = Gauge("feature_consumer_lag_seconds",
                                 "Age of the oldest uncommitted record (0 when caught up)", p, registry=r)
        self.m_committed_offset = Gauge("feature_consumer_committed_offset", "Next offset committed", p, registry=r)
        self.m_log_end_offset = Gauge("feature_consumer_log_end_offset", "Log end offset (high watermark)", p,
                                    registry=r)
        self.m_partition_paused = Gauge("feature_consumer_partition_paused", "1 while the partition is paused", p,
                                      registry=r)
        self.m_consumed = Counter("feature_consumer_records_consumed", "Records decoded into a view's rows",
                                ["view"], registry=r)
        self.m_written = Counter("feature_consumer_records_written", "Entity rows written (all or some features)",
                               ["view"], registry=r)
        self.m_stale = Counter("feature_consumer_records_stale", "Entity rows skipped: the stored values are newer",
                             ["view"], registry=r)
        self.m_superseded = Counter("feature_consumer_records_superseded",
                                  "Records dropped for a newer one of the same entity in the same batch",
                                  ["view"], registry=r)
        self.m_dead_lettered = Counter("feature_consumer_records_dead_lettered",
                                     "Records sent to the dead-letter topic", ["view", "error_class"], registry=r)
        self.m_not_applied = Counter("feature_consumer_conditional_writes_not_applied",
                                   "Conditional writes Cassandra did not apply", ["view"], registry=r)
        self.m_write_retries = Counter("feature_consumer_write_retries", "Conditional writes sent again", ["view"],
                                     registry=r)
        self.m_write_errors = Counter("feature_consumer_write_errors",
                                      "Conditional requests that failed and were sent again, by error "
                                      "(WriteTimeout/CAS: a Paxos round whose outcome was unknown)",
                                      ["view", "error"], registry=r)
        self.m_batch_size = Histogram("feature_consumer_batch_size", "Records per batch sent to the writer",
                                    buckets=BATCH_BUCKETS, registry=r)
        # Fed a batch's values at once (histogram.py): per row, one observe each was the loop's largest cost.
        self.m_write_latency = BatchHistogram("feature_consumer_write_latency_seconds",
                                              "Latency of one conditional write request", ["view"],
                                              LATENCY_BUCKETS, r)
        self.m_record_wait = BatchHistogram("feature_consumer_record_wait_seconds",
                                            "Time from reading a record to sending its write's first request",
                                            ["view"], WAIT_BUCKETS, r)
        self.m_in_flight = Gauge("feature_consumer_records_in_flight",
                                 "Records sent to the writer or the dead-letter topic and not done yet", registry=r)
        self.m_freshness = BatchHistogram("feature_consumer_event_to_online_seconds",
                                          "Time the write was acknowledged minus event timestamp, per written row",
                                          ["view"], FRESHNESS_BUCKETS, r)
        self.m_rebalances = Counter("feature_consumer_rebalances", "Partition assignment changes", ["kind"],
                                  registry=r)
        self.m_assigned_partitions = Gauge("feature_consumer_assigned_partitions", "Partitions owned", registry=r)
        self.m_failures = Counter("feature_consumer_transient_failures",
                                  "Failures of a dependency that paused the partitions",
                                ["error_class"], registry=r)
        self.m_last_commit_age = Gauge("feature_consumer_seconds_since_last_commit",
                                     "Seconds since this process last committed", registry=r)
        self.m_last_commit_age.set_function(self._seconds_since_commit)
        self.started = clock()
        self.last_commit: float | None = None
        self.last_turn: float | None = None
        self.assignment_received = False
        self.store_answers = False
        # Set when partitions are assigned: the lag collector asks about them at once.
        self.assignment_changed = threading.Event()
        # Per partition: committed offset, log end, caught-up time, and (offset, timestamp in s) of every
        # record read and not yet committed, oldest first (at most the loop's buffer).
        self.owned: set[TP] = set()
        self.committed_offsets: dict[TP, int] = {}
        self.log_ends: dict[TP, int] = {}
        self.pending: dict[TP, deque[tuple[int, float]]] = {}
        self.caught_up_at: dict[TP, float] = {}

    # ------------------------------------------------------------------ loop events

    def loop_turned(self, now: float) -> None:
        self.last_turn = now

    def received(self, messages: Sequence[Message]) -> None:
        now = self.clock()
        with self._lock:
            for message in messages:
                tp = (message.topic() or "", message.partition() or 0)
                if tp not in self.owned:
                    continue
                kind, ts_ms = message.timestamp()
                offset = message.offset() or 0
                pending = self.pending.setdefault(tp, deque())
                if pending and offset <= pending[-1][0]:
                    # The position went back (an offset reset after the log was truncated, say): what was
                    # read before will not be committed in order, so it no longer says anything.
                    pending.clear()
                # Without a Kafka timestamp, the time it was read: the lag in seconds still grows from there.
                pending.append((offset, ts_ms / 1000 if kind and ts_ms > 0 else now))

    def batch_assembled(self, batch: Batch) -> None:
        self.m_batch_size.observe(batch.size)
        for view_batch in batch.views:
            self.m_consumed.labels(view_batch.view.name).inc(view_batch.records)
            self.m_superseded.labels(view_batch.view.name).inc(view_batch.superseded)

    def view_written(self, view_batch: ViewBatch, report: WriteReport, waits: list[float]) -> None:
        name = view_batch.view.name
        statuses = report.statuses
        written = np.fromiter((s is RowStatus.APPLIED or s is RowStatus.PARTIAL for s in statuses), dtype=bool,
                              count=len(statuses))
        self.m_written.labels(name).inc(int(written.sum()))
        self.m_stale.labels(name).inc(report.count(RowStatus.STALE))
        self.m_not_applied.labels(name).inc(report.not_applied)
        self.m_write_retries.labels(name).inc(report.retries)
        for error, count in report.errors.items():
            self.m_write_errors.labels(name, error).inc(count)
        self.m_write_latency.labels(name).observe(report.latencies)
        done_at = np.asarray(report.done_at, dtype=np.float64)
        self.m_freshness.labels(name).observe(done_at[written] - view_batch.rows.event_ms[written] / 1000)
        self.m_record_wait.labels(name).observe(waits)

    def in_flight(self, records: int) -> None:
        self.m_in_flight.set(records)

    def dead_lettered(self, rejected: list[Rejected]) -> None:
        for item in rejected:
            topic = item.error.source.topic if item.error.source else ""
            views = self._views_by_topic.get(topic, [])
            view = views[0] if len(views) == 1 else "(unknown)"
            self.m_dead_lettered.labels(view, item.error.error_class).inc()

    def committed(self, offsets: Mapping[TP, int], now: float) -> None:
        with self._lock:
            self.last_commit = now
            for tp, offset in offsets.items():
                self.committed_offsets[tp] = offset
                pending = self.pending.get(tp)
                while pending and pending[0][0] < offset:
                    pending.popleft()
                self.m_committed_offset.labels(*_labels(tp)).set(offset)
            self._refresh_lag(now)

    def assigned(self, partitions: list[TP]) -> None:
        with self._lock:
            self.assignment_received = True
            self.m_rebalances.labels("assign").inc()
            now = self.clock()
            for tp in partitions:
                self.owned.add(tp)
                self.caught_up_at.setdefault(tp, now)
            self.m_assigned_partitions.set(len(self.owned))
        self.assignment_changed.set()

    def revoked(self, partitions: list[TP], lost: bool) -> None:
        with self._lock:
            self.m_rebalances.labels("lost" if lost else "revoke").inc()
            for tp in partitions:
                self.owned.discard(tp)
                for store in (self.committed_offsets, self.log_ends, self.pending, self.caught_up_at):
                    store.pop(tp, None)
                for gauge in (self.m_lag_offsets, self.m_lag_seconds, self.m_committed_offset, self.m_log_end_offset,
                              self.m_partition_paused):
                    with contextlib.suppress(KeyError):  # no series yet for this partition
                        gauge.remove(*_labels(tp))
            self.m_assigned_partitions.set(len(self.owned))

    def paused(self, partitions: set[TP], paused: bool) -> None:
        for tp in partitions:
            self.m_partition_paused.labels(*_labels(tp)).set(1 if paused else 0)

    def failed(self, error: TransientError) -> None:
        self.m_failures.labels(type(error).__name__).inc()

    # ------------------------------------------------------------------ lag

    def seed_committed(self, offsets: Mapping[TP, int]) -> None:
        """Where the group stands for newly assigned partitions (before this process commits)."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self.owned and tp not in self.committed_offsets:
                    self.committed_offsets[tp] = offset
                    self.m_committed_offset.labels(*_labels(tp)).set(offset)

    def update_log_end(self, ends: Mapping[TP, int]) -> None:
        with self._lock:
            for tp, end in ends.items():
                if tp in self.owned:
                    self.log_ends[tp] = end
                    self.m_log_end_offset.labels(*_labels(tp)).set(end)
            self._refresh_lag(self.clock())

    def _refresh_lag(self, now: float) -> None:
        for tp in self.owned:
            end = self.log_ends.get(tp)
            committed = self.committed_offsets.get(tp)
            if end is None or committed is None:
                continue  # no figure before the brokers were asked: the offset read so far is not the log end
            pending = self.pending.get(tp)
            if pending:
                end = max(end, pending[-1][0] + 1)
            lag = max(0, end - committed)
            self.m_lag_offsets.labels(*_labels(tp)).set(lag)
            if lag == 0:
                self.caught_up_at[tp] = now
                self.m_lag_seconds.labels(*_labels(tp)).set(0)
            else:
                since = pending[0][1] if pending else self.caught_up_at.get(tp, now)
                self.m_lag_seconds.labels(*_labels(tp)).set(max(0.0, now - since))

    def refresh(self) -> None:
        """Recompute lag in seconds (it grows with wall time even when nothing else changes)."""
        with self._lock:
            self._refresh_lag(self.clock())

    def snapshot(self) -> dict[TP, tuple[int | None, int | None]]:
        with self._lock:
            return {tp: (self.committed_offsets.get(tp), self.log_ends.get(tp)) for tp in self.owned}

    def _seconds_since_commit(self) -> float:
        return self.clock() - (self.last_commit if self.last_commit is not None else self.started)

    # ------------------------------------------------------------------ health

    def healthy(self, stuck_after_s: float) -> bool:
        """The loop turned recently (it turns at least every half second when it is alive)."""
        last = self.last_turn if self.last_turn is not None else self.started
        return self.clock() - last <= stuck_after_s

    def ready(self) -> bool:
        return self.assignment_received and self.store_answers


def _labels(tp: TP) -> tuple[str, str]:
    return tp[0], str(tp[1])
