"""The end-to-end benchmark's anchors on the write side, each on the rows our run wrote:

  (a) the writer alone: `CassandraStore` on the same rows already decoded and encoded (chunks of 5,000
      submitted at once, as the loop would under a backlog);
  (b) the fastest raw cassandra-driver loop for the same conditional batches: one prepared unlogged
      batch of `UPDATE ... IF event_ts < ?` for an entity's features, a sliding window of
      `execute_async` with callbacks (each answer sends the next), at the best of several windows.

Both run on a keyspace seeded like ours (an older version of every entity), so every write is a guarded
update. CPU is the whole process's, from /proc, during the timed part. Each anchor, like the daemon,
starts its timed part with the heap frozen (`consumer.app.settle_heap`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cassandra.concurrent import execute_concurrent

from consumer.app import settle_heap
from consumer.cassandra.binding import UPDATE_OLDER_LAYOUT, RoundBinder
from consumer.cassandra.schema import table_name
from consumer.cassandra.window import when_answered
from consumer.cassandra.writer import CassandraStore
from consumer.core.guard import NULL_MS
from consumer.core.store import EncodedRows, WriteReport
from consumer.core.views import FeatureView

Row = tuple[str, int, int, dict[str, bytes]]  # entity key, event ms, created ms, value per feature
_CLOCK_TICKS = 100  # USER_HZ on Linux


def process_cpu_s() -> float:
    """User + system CPU seconds of this whole process (every thread), from /proc."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / _CLOCK_TICKS, sum(ticks) / _CLOCK_TICKS


def wait_quiet(below_cores: float = 0.3, at_most_s: float = 30.0, step_s: float = 0.5) -> float:
    """Wait until the whole machine is nearly idle (fewer than `below_cores` busy over the last `step_s`), for
    at most `at_most_s`; the seconds waited. A candidate should not start inside the flushes and
    compactions its own seeding, or an earlier candidate, left Cassandra with."""
    started = time.monotonic()
    busy, _ = machine_busy_s()
    while time.monotonic() - started < at_most_s:
        time.sleep(step_s)
        now, _ = machine_busy_s()
        if (now - busy) / step_s < below_cores:
            break
        busy = now
    return time.monotonic() - started


class Meter:
    """CPU seconds so far: this process's (`client`), each named service's, and the whole machine's busy time
    (`machine`, all cores; `total`: all cores' time, busy or not). The cores are shared by everything here, so
    a candidate's cost is the CPU the services spent for it as well as its own."""

    def __init__(self, services: Mapping[str, int | None] | None = None) -> None:
        self._pids = {name: pid for name, pid in (services or {}).items() if pid}

    def read(self) -> dict[str, float]:
        busy, total = machine_busy_s()
        now = {"machine": busy, "total": total, "client": process_cpu_s()}
        now.update({name: pid_cpu_s(pid) for name, pid in self._pids.items()})
        return now

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


@dataclass
class Measured:
    rows: int
    seconds: float
    cpu_s: float
    setting: str = ""
    spent: dict[str, float] = field(default_factory=dict)  # Meter.spent over the timed part

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_ms_per_row(self) -> float:
        return 1000 * self.cpu_s / self.rows

    def ms_per_row(self, name: str) -> float:
        """CPU ms per row of `name` in `spent` (nan when it was not measured)."""
        return 1000 * self.spent[name] / self.rows if name in self.spent else float("nan")

    def __add__(self, other: Measured) -> Measured:
        spent = {name: value + other.spent[name] for name, value in self.spent.items() if name in other.spent}
        return Measured(self.rows + other.rows, self.seconds + other.seconds, self.cpu_s + other.cpu_s,
                        self.setting, spent)


def seed_store(store: CassandraStore, view: FeatureView, keys: Sequence[str]) -> None:
    """An older version of every entity, written blindly: each measured write is then a guarded update."""
    table = table_name(store.options.keyspace, view)
    insert = store.session.prepare(
        f"INSERT INTO {table} (entity_key, feature_name, value, event_ts) VALUES (?, ?, ?, 1)")
    params = [(insert, (k, f.name, b"")) for k in keys for f in view.features]
    for start in range(0, len(params), 50_000):
        execute_concurrent(store.session, params[start:start + 50_000], concurrency=256, raise_on_first_error=True)


def writer_alone(store: CassandraStore, view: FeatureView, rows: Sequence[Row], chunk: int = 5000,
                 meter: Meter | None = None) -> Measured:
    """(a): the rows, as encoded rows, through our writer; the keyspace must be seeded already."""
    features = [f.name for f in view.features]
    batches = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        batches.append(EncodedRows([r[0] for r in part], np.array([r[1] for r in part], dtype=np.int64),
                                   np.array([r[2] for r in part], dtype=np.int64),
                                   {f: [r[3][f] for r in part] for f in features}))
    done = threading.Semaphore(0)
    reports: list[WriteReport] = []

    def finished(report: WriteReport) -> None:
        reports.append(report)
        done.release()

    store.write(view, _first(batches[0]))  # connect and prepare: not timed
    settle_heap()  # as the daemon does before its loop
    meter = meter or Meter()
    before, started = meter.read(), time.perf_counter()
    for batch in batches:
        store.submit(view, batch, finished)
    for _ in batches:
        done.acquire()
    seconds, spent = time.perf_counter() - started, Meter.spent(before, meter.read())
    assert all(r.error is None and not r.failures for r in reports)
    return Measured(len(rows), seconds, spent["client"], spent=spent)


def _first(rows: EncodedRows) -> EncodedRows:
    """A one-row write of an entity the timed run writes again later (older version: it stays a guarded update)."""
    return EncodedRows(rows.entity_keys[:1], rows.event_ms[:1] - 1, rows.created_ms[:1],
                       {f: v[:1] for f, v in rows.values.items()})


def _update_older_batch(session: Any, keyspace: str, view: FeatureView) -> RoundBinder:
    """The prepared batch, bound as our writer binds it: each distinct parameter serialized once
    (consumer/cassandra/binding.py), which costs less client CPU than the driver's `bind`."""
    table = table_name(keyspace, view)
    body = " ".join(f"UPDATE {table} SET value = ?, event_ts = ?, created_ts = ? WHERE entity_key = ? AND "
                    f"feature_name = '{f.name}' IF event_ts < ?;" for f in view.features)
    binder = RoundBinder(session.prepare(f"BEGIN UNLOGGED BATCH {body} APPLY BATCH"), UPDATE_OLDER_LAYOUT,
                         len(view.features))
    assert binder.fast, "(b) would bind through the driver's bind"
    return binder


@dataclass
class Paced:
    rate: float
    latencies: list[float]  # seconds from sending to the answer, per write
    cassandra_cores: float


def raw_paced(session: Any, keyspace: str, view: FeatureView, keys: Sequence[str], rate: float,
              cassandra_pid: int | None) -> Paced:
    """The floor under freshness at a rate: the raw driver sends one guarded write (b's statement) of each
    key at `rate` per second, each as soon as it is due, with no Kafka in between; how long each takes, and
    the CPU Cassandra spends meanwhile."""
    prepared = _update_older_batch(session, keyspace, view)
    latencies: list[float] = []
    failures: list[BaseException] = []
    answered = threading.Semaphore(0)

    def done(_result: Any, sent: float) -> None:
        latencies.append(time.perf_counter() - sent)
        answered.release()

    def failed(error: BaseException, _sent: float) -> None:
        failures.append(error)
        answered.release()

    cpu, started = pid_cpu_s(cassandra_pid) if cassandra_pid else 0.0, time.perf_counter()
    for i, key in enumerate(keys):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ms = int(time.time() * 1000)
        request = prepared.bind(key, ms, ms, [b"\x00"] * len(view.features))
        sent = time.perf_counter()
        # As our writer does: else each request is a reference cycle (consumer/cassandra/window.py).
        when_answered(session.execute_async(request), done, failed, sent)
    for _ in keys:
        answered.acquire()
    seconds = time.perf_counter() - started
    assert not failures, failures[:3]
    cores = (pid_cpu_s(cassandra_pid) - cpu) / seconds if cassandra_pid else float("nan")
    return Paced(len(keys) / seconds, latencies, cores)


def raw_loop(session: Any, keyspace: str, view: FeatureView, rows: Sequence[Row], window: int,
             meter: Meter | None = None) -> Measured:
    """(b): the same conditional batches, straight through the driver, `window` requests in flight."""
    features = [f.name for f in view.features]
    prepared = _update_older_batch(session, keyspace, view)
    lock = threading.Lock()
    finished = threading.Event()
    position = 0
    outstanding = 0
    failures: list[BaseException] = []

    def send_next() -> None:
        nonlocal position, outstanding
        with lock:
            if position >= len(rows):
                if outstanding == 0:
                    finished.set()
                return
            key, event_ms, created_ms, values = rows[position]
            position += 1
            outstanding += 1
        created = None if created_ms == NULL_MS else created_ms
        request = prepared.bind(key, event_ms, created, [values[f] for f in features])
        when_answered(session.execute_async(request), answered, failed)  # as our writer does

    def answered(_rows: Any) -> None:
        nonlocal outstanding
        with lock:
            outstanding -= 1
        send_next()

    def failed(error: BaseException) -> None:
        failures.append(error)
        answered(None)

    settle_heap()
    meter = meter or Meter()
    before, started = meter.read(), time.perf_counter()
    for _ in range(min(window, len(rows))):
        send_next()
    finished.wait()
    seconds, spent = time.perf_counter() - started, Meter.spent(before, meter.read())
    assert not failures, failures[:3]
    return Measured(len(rows), seconds, spent["client"], f"window {window}", spent)
