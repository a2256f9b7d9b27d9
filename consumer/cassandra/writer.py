"""Feast's Cassandra online store, written through the timestamp guard.

Every write is a lightweight transaction: the features of one entity go out as one conditional batch on
its partition, with the condition the guard chooses from what is known of the stored rows (rounds.py).
Requests run through a bounded window of asynchronous executions (like the driver's
`execute_concurrent`), and outcomes are values.

Driver errors are classified once, by type (errors.py):
* a timeout of a conditional write leaves its outcome unknown; the same round is sent again, which the
  guard makes safe;
* unavailable replicas, overload and lost connections are retried with backoff, then reported as
  `StoreUnavailable` (transient: the batch is retried later and nothing past it is committed);
* a missing keyspace or table, or refused credentials, is `StoreMisconfigured` (the process stops);
* any other refusal of one entity's write fails that row only, with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from cachetools import LRUCache

from consumer.cassandra.connection import CassandraOptions, connect
from consumer.cassandra.errors import Failure, classify
from consumer.cassandra.rounds import Task, millis
from consumer.cassandra.schema import create_keyspace_cql, create_table_cql, table_name
from consumer.cassandra.statements import Statements
from consumer.core import guard
from consumer.core.errors import StoreMisconfigured, StoreUnavailable
from consumer.core.guard import FirstGuess, Version
from consumer.core.policy import Backoff
from consumer.core.store import EncodedRows, RowStatus, StoredCell, WriteReport
from consumer.core.views import FeatureView

log = logging.getLogger(__name__)

MAX_RETRIES = 6
# The pause before a round is sent again after a transient error: 100 ms, doubling, at most 2 s.
RETRY_BACKOFF = Backoff(100, 2000)


class CassandraStore:
    """Guarded writes to Feast's Cassandra online store."""

    def __init__(
        self,
        options: CassandraOptions,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self._clock = clock
        self._sleep = sleep
        self._cluster: Any = None
        self._session: Any = None
        self._connecting = threading.Lock()  # the loop and the lag collector's ping may both connect first
        self._statements: dict[str, Statements] = {}
        self._cache: LRUCache[tuple[str, str], Version] | None = (
            LRUCache(maxsize=options.cache_entries) if options.cache_entries else None
        )
        self._first_guess = FirstGuess()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._connecting:
                if self._session is None:
                    self._cluster, self._session = connect(self.options)
        return self._session

    def close(self) -> None:
        with self._connecting:
            if self._cluster is not None:
                self._cluster.shutdown()
            self._cluster = None
            self._session = None
        self._statements.clear()

    def ping(self) -> str:
        """Cassandra's release version; raises StoreUnavailable when it does not answer."""
        try:
            row = self.session.execute("SELECT release_version FROM system.local").one()
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"Cassandra does not answer: {exc}") from exc
        return str(row["release_version"])

    def create_schema(self, views: Iterable[FeatureView], create_keyspace: bool) -> list[str]:
        """Feast's tables for the views (and the keyspace if asked); returns the CQL it ran."""
        done = []
        keyspace = self.options.keyspace
        if create_keyspace:
            cql = create_keyspace_cql(keyspace, self.options.replication)
            self.session.execute(cql)
            done.append(cql)
        for view in views:
            cql = create_table_cql(keyspace, view)
            try:
                self.session.execute(cql)
            except Exception as exc:
                raise self._translate(exc, view) from exc
            done.append(cql)
        return done

    def _prepare(self, view: FeatureView) -> Statements:
        table = table_name(self.options.keyspace, view)
        prepared = self._statements.get(table)
        if prepared is None:
            try:
                prepared = Statements.prepare(self.session, self.options.keyspace, view)
            except StoreUnavailable:
                raise
            except Exception as exc:
                raise self._translate(exc, view) from exc
            self._statements[table] = prepared
        return prepared

    def _table_exists(self, view: FeatureView) -> bool:
        """What the driver's schema metadata (kept current by schema-change events) says of the table."""
        metadata = self._cluster.metadata if self._cluster is not None else None
        keyspace = metadata.keyspaces.get(self.options.keyspace) if metadata is not None else None
        return keyspace is not None and view.table in keyspace.tables

    def _translate(self, error: BaseException, view: FeatureView) -> Exception:
        """A driver error on the whole view's table (preparing, DDL) as one of ours."""
        kind = classify(error)
        if kind is Failure.RETRY:
            return StoreUnavailable(f"Cassandra failed for {view.table}: {error}")
        if not self._table_exists(view):
            return StoreMisconfigured(f"table {table_name(self.options.keyspace, view)} does not exist; run "
                                      f"`feature-consumer init-schema` ({error})")
        return StoreMisconfigured(f"Cassandra refused access to {table_name(self.options.keyspace, view)}: {error}")

    def read(self, view: FeatureView, entity_key: str) -> dict[str, StoredCell]:
        """The stored cells of one entity (for checks, demos and tests)."""
        rows = self.session.execute(self._prepare(view).select, (entity_key,))
        return {
            r["feature_name"]: StoredCell(r["value"], millis(r["event_ts"]) or 0, millis(r["created_ts"]))
            for r in rows
        }

    # ------------------------------------------------------------------ guarded writes

    def write(self, view: FeatureView, rows: EncodedRows, budget_s: float | None = None) -> WriteReport:
        """Write every row through the guard; blocks until each row has an outcome.

        Raises StoreUnavailable when Cassandra keeps failing, or when `budget_s` runs out first (nothing
        about which rows were written is then promised; re-sending them is safe), and StoreMisconfigured
        when it refuses the table.
        """
        deadline = None if budget_s is None else self._clock() + budget_s
        statements = self._prepare(view)
        table = view.table
        n = len(rows)
        report = WriteReport(statuses=[RowStatus.STALE] * n)
        features = [f.name for f in view.features]
        tasks: deque[Task] = deque()
        guess = self._first_guess.guess()
        for i in range(n):
            key = rows.entity_keys[i]
            ours = (int(rows.event_ms[i]), int(rows.created_ms[i]))
            bound = self._cache_get(table, key)
            if guard.certainly_stale(ours, bound):
                report.cache_skips += 1
                continue
            values = {f: rows.values[f][i] for f in features}
            tasks.append(Task(i, key, ours, values, guess=guess or bound is not None, remaining=list(features),
                              probe=bound is None))

        answers: queue.SimpleQueue[tuple[Task, Any, BaseException | None, float]] = queue.SimpleQueue()
        in_flight = 0
        waiting: list[Task] = []
        window = self.options.max_in_flight
        while tasks or waiting or in_flight:
            now = self._clock()
            if deadline is not None and now >= deadline:
                raise StoreUnavailable(f"writes to {view.table} not done within {budget_s:.1f}s "
                                       f"({len(tasks) + len(waiting) + in_flight} entities unfinished)")
            if waiting:
                ready = [t for t in waiting if t.not_before <= now]
                if ready:
                    waiting = [t for t in waiting if t.not_before > now]
                    tasks.extendleft(reversed(ready))
            while tasks and in_flight < window:
                task = tasks.popleft()
                steps = task.next_round()
                if not steps:
                    self._finish(task, table, report)
                    continue
                self._send(statements.request(task.key, task.ours, task.values, steps), task, answers)
                in_flight += 1
            if not in_flight:
                if waiting:
                    pause = min(t.not_before for t in waiting) - self._clock()
                    if deadline is not None:
                        pause = min(pause, deadline - self._clock())
                    self._sleep(max(0.0, pause))
                continue
            try:
                task, result, error, started = answers.get(
                    timeout=None if deadline is None else max(0.0, deadline - self._clock()))
            except queue.Empty:
                continue  # out of time: the check at the top of the loop says so
            in_flight -= 1
            report.requests += 1
            report.latencies.append(self._clock() - started)
            if error is None:
                applied, existed = task.absorb(result)
                if not applied:
                    report.not_applied += 1
                if existed is not None:
                    self._first_guess = self._first_guess.observe(existed)
                if task.remaining:
                    tasks.append(task)
                else:
                    self._finish(task, table, report)
                continue
            kind = classify(error)
            if kind is Failure.ROW and not self._table_exists(view):
                kind = Failure.FATAL
            if kind is Failure.FATAL:
                raise self._translate(error, view) from error
            if kind is Failure.ROW:
                report.failures[task.index] = f"Cassandra refused the write: {error}"
                report.statuses[task.index] = RowStatus.FAILED
                continue
            task.retries += 1
            report.retries += 1
            if task.retries > MAX_RETRIES:
                raise StoreUnavailable(f"Cassandra keeps failing writes to {view.table}: {error}") from error
            # Unknown outcome (timeout) or transient refusal: send the same round again after a pause.
            task.not_before = self._clock() + RETRY_BACKOFF.delay_ms(task.retries) / 1000
            waiting.append(task)
        return report

    def _cache_get(self, table: str, key: str) -> Version | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get((table, key))

    def _cache_raise(self, table: str, key: str, bound: Version) -> None:
        if self._cache is None:
            return
        with self._lock:
            current = self._cache.get((table, key))
            self._cache[(table, key)] = bound if current is None else max(current, bound)

    def _send(self, request: Any, task: Task, answers: queue.SimpleQueue[Any]) -> None:
        started = self._clock()
        try:
            future = self.session.execute_async(request)
        except Exception as exc:  # noqa: BLE001 - raised before sending (no host): answered like an error
            answers.put((task, None, exc, started))
            return
        future.add_callbacks(
            callback=lambda rows: answers.put((task, rows, None, started)),
            errback=lambda exc: answers.put((task, None, exc, started)),
        )

    def _finish(self, task: Task, table: str, report: WriteReport) -> None:
        report.statuses[task.index] = task.status
        bound = task.lower_bound()
        if bound is not None:
            self._cache_raise(table, task.key, bound)
