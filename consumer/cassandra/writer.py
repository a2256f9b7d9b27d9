"""Feast's Cassandra online store, written through the timestamp guard.

The table is the one `feast apply` creates (`"<keyspace>"."<project>_<view>"`, one partition per entity,
one row per feature), so Feast serves what is written here. Every write is a lightweight transaction:
the features of one entity go out as one conditional batch on its partition, with the condition the
guard (consumer/guard.py) chooses from what is known of the stored rows. Requests run through a bounded
window of asynchronous executions (like the driver's `execute_concurrent`), and outcomes are values.

Errors are classified here, once:
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
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cachetools import LRUCache

from consumer.config import CassandraSettings
from consumer.core import guard
from consumer.core.errors import ConfigError, StoreMisconfigured, StoreUnavailable
from consumer.core.guard import NULL_MS, FirstGuess, Known, Op, Step, Version
from consumer.core.store import EncodedRows, RowStatus, StoredCell, WriteReport
from consumer.core.views import FeatureView, check_identifier

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)
MAX_ROUNDS = 8
MAX_RETRIES = 6


# --------------------------------------------------------------------------- DDL (Feast's layout)


def quote(identifier: str) -> str:
    """A validated identifier, double-quoted as Feast quotes it (so it is case-sensitive)."""
    check_identifier(identifier, "identifier")
    return f'"{identifier}"'


def table_name(keyspace: str, view: FeatureView) -> str:
    return f"{quote(keyspace)}.{quote(view.table)}"


def create_keyspace_cql(keyspace: str, replication: Mapping[str, str | int]) -> str:
    def literal(value: str | int) -> str:
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    pairs = ", ".join(f"{literal(str(k))}: {literal(v)}" for k, v in replication.items())
    return f"CREATE KEYSPACE IF NOT EXISTS {quote(keyspace)} WITH replication = {{{pairs}}}"


def _batch_of(statement: str, view: FeatureView) -> str:
    """An unlogged batch of `statement` for each feature of the view (feature names are validated identifiers)."""
    body = " ".join(statement.replace("{feature}", check_identifier(f.name, "feature name")) + ";"
                    for f in view.features)
    return f"BEGIN UNLOGGED BATCH {body} APPLY BATCH"


def create_table_cql(keyspace: str, view: FeatureView) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table_name(keyspace, view)} (\n"
        "    entity_key TEXT,\n"
        "    feature_name TEXT,\n"
        "    value BLOB,\n"
        "    event_ts TIMESTAMP,\n"
        "    created_ts TIMESTAMP,\n"
        "    PRIMARY KEY ((entity_key), feature_name)\n"
        ") WITH CLUSTERING ORDER BY (feature_name ASC)"
    )


# --------------------------------------------------------------------------- the writer


@dataclass
class _Statements:
    insert: Any
    update_older: Any
    update_null_event: Any
    update_tie: Any
    update_exact: Any
    select: Any
    # The common rounds, one prepared conditional batch for all of the view's features: one statement to
    # bind instead of one per feature (the client's CPU is shared with Cassandra's).
    features: tuple[str, ...]
    insert_all: Any
    update_older_all: Any


@dataclass
class _Task:
    index: int
    key: str
    ours: Version
    values: dict[str, bytes]
    guess: bool
    known: dict[str, Known] = field(default_factory=dict)
    remaining: list[str] = field(default_factory=list)
    stale_versions: list[Version] = field(default_factory=list)
    written: int = 0
    stale: int = 0
    steps: dict[str, Step] = field(default_factory=dict)
    rounds: int = 0
    retries: int = 0
    not_before: float = 0.0
    # True when nothing was known of the entity (no cache entry): its first answer teaches FirstGuess.
    probe: bool = True


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MS
    return int(value)


def ssl_context(settings: CassandraSettings) -> ssl.SSLContext | None:
    """The driver's TLS context, or None for plaintext.

    Any ssl_* setting turns TLS on, as configuring SSL does in DataStax's Java driver; without
    `ssl_ca_file` the server is verified against the system's CAs. The server's certificate must also name
    the address the driver connects to (hostname checking is on). Files that cannot be loaded are a
    configuration error naming the key, not a traceback at the first write.
    """
    if not settings.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ssl_ca_file)
    except OSError as exc:
        raise ConfigError(f"cassandra.ssl_ca_file {settings.ssl_ca_file}: cannot load it: {exc}") from None
    if settings.ssl_cert_file:
        try:
            context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file)
        except OSError as exc:
            raise ConfigError(f"cassandra.ssl_cert_file {settings.ssl_cert_file}: cannot load the client "
                              f"certificate and its key: {exc}") from None
    return context


class CassandraStore:
    """Guarded writes to Feast's Cassandra online store."""

    def __init__(
        self,
        settings: CassandraSettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._cluster: Any = None
        self._session: Any = None
        self._statements: dict[str, _Statements] = {}
        self._cache: LRUCache[tuple[str, str], Version] | None = (
            LRUCache(maxsize=settings.cache_entries) if settings.cache_entries else None
        )
        self._first_guess = FirstGuess()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
        from cassandra.policies import (
            DCAwareRoundRobinPolicy,
            ExponentialReconnectionPolicy,
            TokenAwarePolicy,
        )
        from cassandra.query import dict_factory

        s = self.settings
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=s.local_dc)),
            consistency_level=ConsistencyLevel.name_to_value[s.consistency],
            serial_consistency_level=ConsistencyLevel.name_to_value[s.serial_consistency],
            request_timeout=s.request_timeout_s,
            row_factory=dict_factory,
        )
        kwargs: dict[str, Any] = {
            "port": s.port,
            "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
            "connect_timeout": s.connect_timeout_s,
            "control_connection_timeout": s.connect_timeout_s,
            "reconnection_policy": ExponentialReconnectionPolicy(0.5, 5.0),
        }
        if s.protocol_version:
            kwargs["protocol_version"] = s.protocol_version
        if s.username:
            password = s.password.get_secret_value() if s.password else ""
            kwargs["auth_provider"] = PlainTextAuthProvider(username=s.username, password=password)
        context = ssl_context(s)
        if context is not None:
            kwargs["ssl_context"] = context
        self._cluster = Cluster(s.hosts, **kwargs)
        try:
            self._session = self._cluster.connect()
        except NoHostAvailable as exc:
            self._cluster.shutdown()
            self._cluster = None
            raise StoreUnavailable(f"Cassandra at {s.hosts}:{s.port} is unreachable: {exc}") from exc

    @property
    def session(self) -> Any:
        if self._session is None:
            self.connect()
        return self._session

    def close(self) -> None:
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
        keyspace = self.settings.keyspace
        if create_keyspace:
            cql = create_keyspace_cql(keyspace, self.settings.replication)
            self.session.execute(cql)
            done.append(cql)
        for view in views:
            cql = create_table_cql(keyspace, view)
            try:
                self.session.execute(cql)
            except Exception as exc:
                raise _classify_fatal(exc, keyspace, view) from exc
            done.append(cql)
        return done

    def _prepare(self, view: FeatureView) -> _Statements:
        table = table_name(self.settings.keyspace, view)
        prepared = self._statements.get(table)
        if prepared is not None:
            return prepared
        cols = "SET value = ?, event_ts = ?, created_ts = ? WHERE entity_key = ? AND feature_name = ?"
        try:
            prepared = _Statements(
                insert=self.session.prepare(
                    f"INSERT INTO {table} (entity_key, feature_name, value, event_ts, created_ts) "
                    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                update_older=self.session.prepare(f"UPDATE {table} {cols} IF event_ts < ?"),
                update_null_event=self.session.prepare(f"UPDATE {table} {cols} IF event_ts = null"),
                update_tie=self.session.prepare(f"UPDATE {table} {cols} IF event_ts = ? AND created_ts <= ?"),
                update_exact=self.session.prepare(f"UPDATE {table} {cols} IF event_ts = ? AND created_ts = ?"),
                select=self.session.prepare(
                    f"SELECT feature_name, value, event_ts, created_ts FROM {table} WHERE entity_key = ?"
                ),
                features=tuple(f.name for f in view.features),
                insert_all=self.session.prepare(_batch_of(
                    f"INSERT INTO {table} (entity_key, feature_name, value, event_ts, created_ts) "
                    "VALUES (?, '{feature}', ?, ?, ?) IF NOT EXISTS", view)),
                update_older_all=self.session.prepare(_batch_of(
                    f"UPDATE {table} SET value = ?, event_ts = ?, created_ts = ? "
                    "WHERE entity_key = ? AND feature_name = '{feature}' IF event_ts < ?", view)),
            )
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise _classify_fatal(exc, self.settings.keyspace, view) from exc
        self._statements[table] = prepared
        return prepared

    def read(self, view: FeatureView, entity_key: str) -> dict[str, StoredCell]:
        """The stored cells of one entity (for checks, demos and tests)."""
        rows = self.session.execute(self._prepare(view).select, (entity_key,))
        return {
            r["feature_name"]: StoredCell(r["value"], _ms(r["event_ts"]) or 0, _ms(r["created_ts"])) for r in rows
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
        tasks: deque[_Task] = deque()
        guess = self._first_guess.guess()
        for i in range(n):
            key = rows.entity_keys[i]
            ours = (int(rows.event_ms[i]), int(rows.created_ms[i]))
            bound = self._cache_get(table, key)
            if guard.certainly_stale(ours, bound):
                report.cache_skips += 1
                continue
            values = {f: rows.values[f][i] for f in features}
            tasks.append(_Task(i, key, ours, values, guess=guess or bound is not None, remaining=list(features),
                               probe=bound is None))

        answers: queue.SimpleQueue[tuple[_Task, Any, BaseException | None, float]] = queue.SimpleQueue()
        in_flight = 0
        waiting: list[_Task] = []
        window = self.settings.max_in_flight
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
                request = self._next_request(task, statements)
                if request is None:
                    self._finish(task, table, report)
                    continue
                self._send(request, task, answers)
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
                self._absorb(task, result, report)
                if task.remaining:
                    tasks.append(task)
                else:
                    self._finish(task, table, report)
                continue
            kind = _classify(error)
            if kind == "fatal":
                raise _classify_fatal(error, self.settings.keyspace, view) from error
            if kind == "row":
                report.failures[task.index] = f"Cassandra refused the write: {error}"
                report.statuses[task.index] = RowStatus.FAILED
                continue
            task.retries += 1
            report.retries += 1
            if task.retries > MAX_RETRIES:
                raise StoreUnavailable(f"Cassandra keeps failing writes to {view.table}: {error}") from error
            # Unknown outcome (timeout) or transient refusal: send the same round again after a pause.
            task.not_before = self._clock() + min(2.0, 0.05 * 2 ** task.retries)
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

    def _next_request(self, task: _Task, st: _Statements) -> Any:
        """The conditional statement(s) for the task's next round, or None when nothing is left to send."""
        if not task.steps:  # a new round; a retry re-sends the same steps
            if task.rounds >= MAX_ROUNDS:
                raise StoreUnavailable(f"entity {task.key}: no agreement after {MAX_ROUNDS} rounds (contention)")
            for feature in list(task.remaining):
                step = guard.decide(task.ours, task.known.get(feature), task.guess)
                if step is None:
                    task.remaining.remove(feature)
                    task.stale += 1
                    version = task.known[feature].version
                    task.stale_versions.append(version if version is not None else task.ours)
                else:
                    task.steps[feature] = step
            task.rounds += 1
        if not task.steps:
            return None
        whole = self._bind_all(st, task)
        if whole is not None:
            return whole
        bound = [self._bind(st, task, feature, step) for feature, step in task.steps.items()]
        if len(bound) == 1:
            return bound[0]
        from cassandra.query import BatchStatement, BatchType

        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for statement in bound:
            batch.add(statement)
        return batch

    @staticmethod
    def _bind_all(st: _Statements, task: _Task) -> Any:
        """The round as one prepared batch, when every feature gets the same INSERT or UPDATE-if-older."""
        if tuple(task.steps) != st.features:
            return None
        ops = {step.op for step in task.steps.values()}
        event_ms, created_ms = task.ours
        created = None if created_ms == NULL_MS else created_ms
        if ops == {Op.INSERT}:
            params: list[Any] = []
            for feature in st.features:
                params += (task.key, task.values[feature], event_ms, created)
            return st.insert_all.bind(params)
        if ops == {Op.UPDATE_OLDER}:
            params = []
            for feature in st.features:
                params += (task.values[feature], event_ms, created, task.key, event_ms)
            return st.update_older_all.bind(params)
        return None

    @staticmethod
    def _bind(st: _Statements, task: _Task, feature: str, step: Step) -> Any:
        event_ms, created_ms = task.ours
        created = None if created_ms == NULL_MS else created_ms
        value = task.values[feature]
        if step.op is Op.INSERT:
            return st.insert.bind((task.key, feature, value, event_ms, created))
        head = (value, event_ms, created, task.key, feature)
        if step.op is Op.UPDATE_OLDER:
            return st.update_older.bind((*head, step.cond_event_ms))
        if step.op is Op.UPDATE_NULL_EVENT:
            return st.update_null_event.bind(head)
        if step.op is Op.UPDATE_TIE:
            return st.update_tie.bind((*head, step.cond_event_ms, step.cond_created_ms))
        return st.update_exact.bind((*head, step.cond_event_ms, step.cond_created_ms))

    def _send(self, request: Any, task: _Task, answers: queue.SimpleQueue[Any]) -> None:
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

    def _absorb(self, task: _Task, rows: list[dict[str, Any]], report: WriteReport) -> None:
        applied = bool(rows and rows[0].get("[applied]"))
        sent = task.steps
        task.steps = {}
        if applied:
            task.written += len(sent)
            for feature in sent:
                task.remaining.remove(feature)
            if task.probe:
                # An applied UPDATE means the rows existed; an applied INSERT means they did not.
                existed = next(iter(sent.values())).op is not Op.INSERT
                self._first_guess = self._first_guess.observe(existed)
                task.probe = False
            return
        report.not_applied += 1
        learnt = guard.learn(sent, _answer_rows(sent, rows))
        task.known.update(learnt)
        if task.probe:
            self._first_guess = self._first_guess.observe(any(k.exists for k in learnt.values()))
            task.probe = False

    def _finish(self, task: _Task, table: str, report: WriteReport) -> None:
        if task.written and task.stale:
            status = RowStatus.PARTIAL
        elif task.written:
            status = RowStatus.APPLIED
        else:
            status = RowStatus.STALE
        report.statuses[task.index] = status
        if task.written or task.stale_versions:
            self._cache_raise(table, task.key, guard.lower_bound_after(task.ours, bool(task.written),
                                                                         task.stale_versions))


def _answer_rows(sent: Mapping[str, Step], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stored rows a not-applied answer revealed, by feature name.

    A batch's answer carries each existing row's key columns. A single UPDATE's answer carries only the
    columns of its condition (none at all when the row is missing), so it is attributed to its one feature.
    """
    def millis(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _ms(v) if k in ("event_ts", "created_ts") else v for k, v in row.items() if k != "[applied]"}

    if len(sent) == 1 and rows and rows[0].get("feature_name") is None:
        [feature] = sent
        return {feature: millis(rows[0])} if "event_ts" in rows[0] else {}
    return {r["feature_name"]: millis(r) for r in rows if r.get("feature_name") is not None}


def _classify(error: BaseException) -> str:
    """'retry' (transient or unknown outcome), 'row' (this write is refused) or 'fatal'."""
    from cassandra import (
        AuthenticationFailed,
        CoordinationFailure,
        InvalidRequest,
        OperationTimedOut,
        ReadTimeout,
        Unauthorized,
        Unavailable,
        WriteTimeout,
    )
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException
    from cassandra.protocol import ConfigurationException, SyntaxException

    if isinstance(error, (WriteTimeout, ReadTimeout, OperationTimedOut, Unavailable, NoHostAvailable,
                          CoordinationFailure, ConnectionException)):
        return "retry"
    if isinstance(error, (Unauthorized, AuthenticationFailed, SyntaxException, ConfigurationException)):
        return "fatal"
    if isinstance(error, InvalidRequest):
        text = str(error).lower()
        if "unconfigured table" in text or ("keyspace" in text and "does not exist" in text):
            return "fatal"
        return "row"
    return "retry"  # server errors, overload, protocol hiccups


def _classify_fatal(error: BaseException, keyspace: str, view: FeatureView) -> Exception:
    text = str(error)
    if "unconfigured table" in text.lower() or "does not exist" in text.lower():
        return StoreMisconfigured(
            f"table {table_name(keyspace, view)} does not exist; run `feature-consumer init-schema` ({text})"
        )
    kind = _classify(error)
    if kind == "retry":
        return StoreUnavailable(f"Cassandra failed for {view.table}: {text}")
    return StoreMisconfigured(f"Cassandra refused access to {table_name(keyspace, view)}: {text}")
