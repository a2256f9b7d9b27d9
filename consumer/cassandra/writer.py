"""Feast's Cassandra online store, written through the timestamp guard.

Every write is a lightweight transaction: the features of one entity go out as one conditional batch on
its partition, with the condition the guard chooses from what is known of the stored rows (rounds.py).
Requests run on the writer's own thread through a bounded window of asynchronous executions
(engine.py), and outcomes are values handed to the submitter's callback.

Driver errors are classified once, by type (errors.py):
* a timeout of a conditional write leaves its outcome unknown; the same round is sent again, which the
  guard makes safe;
* unavailable replicas, overload and lost connections are retried with backoff; after `MAX_RETRIES` the
  health listener hears of it (the loop pauses its partitions) and the writes go on being retried;
* a missing keyspace or table, or refused credentials, is `StoreMisconfigured` (the process stops);
* any other refusal of one entity's write fails that row only, with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from consumer.cassandra.connection import CassandraOptions, connect
from consumer.cassandra.engine import RETRY_BACKOFF, WriteEngine
from consumer.cassandra.errors import Failure, classify
from consumer.cassandra.rounds import millis
from consumer.cassandra.schema import create_keyspace_cql, create_table_cql, table_name
from consumer.cassandra.statements import Statements
from consumer.core.errors import StoreMisconfigured, StoreUnavailable
from consumer.core.policy import Backoff
from consumer.core.store import Done, EncodedRows, HealthListener, StoredCell, WriteReport
from consumer.core.views import FeatureView

log = logging.getLogger(__name__)



class CassandraStore:
    """Guarded writes to Feast's Cassandra online store."""

    def __init__(
        self,
        options: CassandraOptions,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        retry_backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        self.options = options
        self._retry_backoff = retry_backoff
        self._clock = clock
        self._wall = wall
        self._cluster: Any = None
        self._session: Any = None
        # The loop's writer, the lag collector's ping and the CLI may all connect first: one of them does.
        self._connecting = threading.RLock()
        self._statements: dict[str, Statements] = {}
        self._engine: WriteEngine | None = None
        self._health: HealthListener | None = None
        self._room: Callable[[], None] | None = None

    # ------------------------------------------------------------------ connection

    @property
    def session(self) -> Any:
        if self._session is None:
            with self._connecting:
                if self._session is None:
                    self._cluster, self._session = connect(self.options)
        return self._session

    def close(self) -> None:
        """Stop the writes (what is still in flight is abandoned) and disconnect."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()
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

    def watch(self, listener: HealthListener) -> None:
        self._health = listener
        if self._engine is not None:
            self._engine.health = listener

    def on_room(self, listener: Callable[[], None]) -> None:
        self._room = listener
        if self._engine is not None:
            self._engine.room = listener

    @property
    def window(self) -> int:
        return self.options.max_in_flight

    def pending(self) -> int:
        """Rows submitted without an outcome yet (see `Store.pending`)."""
        return self._engine.pending() if self._engine is not None else 0

    def submit(self, view: FeatureView, rows: EncodedRows, done: Done) -> int:
        """Queue the rows for guarded writes (see `Store.submit`); `done` runs on one of the writer's threads."""
        return self._engine_for_writes().submit(view, rows, done)

    def abandon(self, submissions: Iterable[int]) -> None:
        if self._engine is not None:
            self._engine.abandon(list(submissions))

    def write(self, view: FeatureView, rows: EncodedRows, budget_s: float | None = None) -> WriteReport:
        """Write every row through the guard; blocks until each row has an outcome.

        Raises StoreUnavailable when Cassandra keeps failing, or when `budget_s` runs out first (nothing
        about which rows were written is then promised; re-sending them is safe), and StoreMisconfigured
        when it refuses the table.
        """
        answered = threading.Event()
        reports: list[WriteReport] = []

        def done(report: WriteReport) -> None:
            reports.append(report)
            answered.set()

        job = self._engine_for_writes().submit(view, rows, done, give_up=True)
        if not answered.wait(budget_s):
            self.abandon([job])
            raise StoreUnavailable(f"writes to {view.table} not done within {budget_s:.1f}s")
        report = reports[0]
        if report.error is not None:
            raise report.error
        return report

    def _engine_for_writes(self) -> WriteEngine:
        with self._connecting:
            if self._engine is None:
                self._engine = WriteEngine(lambda: self.session, self._prepare, self._translate, self._table_exists,
                                           self.options.max_in_flight, self.options.cache_entries, self._clock,
                                           self._wall, self._retry_backoff)
                self._engine.health = self._health
                self._engine.room = self._room
                self._engine.start()
            return self._engine
