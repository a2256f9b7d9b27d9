"""The writer's engine with a scripted session: one write per entity in flight, retries after unknown
outcomes, the health listener, and what abandoning and giving up leave behind."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from cassandra import ConsistencyLevel, InvalidRequest, WriteTimeout, WriteType

from consumer.cassandra import engine as engine_module
from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.writer import CassandraStore
from consumer.core.errors import StoreUnavailable
from consumer.core.guard import NULL_MS
from consumer.core.policy import Backoff
from consumer.core.store import EncodedRows, RowStatus, WriteReport
from tests.helpers import driver_view, wait_for

APPLIED = [{"[applied]": True}]


class Future:
    """The driver's ResponseFuture as the writer uses it: callbacks with their extra arguments."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self._callbacks: tuple[Any, tuple[Any, ...], Any, tuple[Any, ...]] | None = None

    def add_callbacks(self, callback: Any, errback: Any, callback_args: tuple[Any, ...] = (),
                      errback_args: tuple[Any, ...] = ()) -> None:
        self._callbacks = (callback, callback_args, errback, errback_args)

    def answer(self, rows: Any) -> None:
        assert self._callbacks is not None
        self._callbacks[0](rows, *self._callbacks[1])

    def fail(self, error: BaseException) -> None:
        assert self._callbacks is not None
        self._callbacks[2](error, *self._callbacks[3])


class Session:
    """Prepares anything; every request waits in `pending` until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[Future] = []
        self.sent = 0
        self.lock = threading.Lock()

    def prepare(self, cql: str) -> Any:
        class Prepared:
            def bind(self, params: Any) -> Any:
                return (cql, tuple(params))
        return Prepared()

    def execute_async(self, request: Any) -> Future:
        future = Future(request)
        with self.lock:
            self.pending.append(future)
            self.sent += 1
        return future

    def take(self, n: int = 1, timeout_s: float = 5.0) -> list[Future]:
        wait_for(lambda: len(self.pending) >= n, timeout_s=timeout_s, what=f"{n} requests in flight")
        with self.lock:
            taken, self.pending = self.pending[:n], self.pending[n:]
        return taken

    def key_of(self, future: Future) -> str:
        _cql, params = future.request
        return next(p for p in params if isinstance(p, str) and p.startswith("k"))


def rows(keys: list[str], event_ms: int = 1000) -> EncodedRows:
    view = driver_view()
    n = len(keys)
    return EncodedRows(keys, np.full(n, event_ms, dtype=np.int64), np.full(n, NULL_MS, dtype=np.int64),
                       {f.name: [b"v"] * n for f in view.features})


def store_with(session: Session, cache_entries: int = 0) -> CassandraStore:
    store = CassandraStore(CassandraOptions(keyspace="ks", cache_entries=cache_entries), retry_backoff=Backoff(1, 5))
    store._session = session  # never connects: requests go to the scripted session
    return store


def submit(store: CassandraStore, keys: list[str], event_ms: int = 1000) -> list[WriteReport]:
    reports: list[WriteReport] = []
    store.submit(driver_view(), rows(keys, event_ms), reports.append)
    return reports


def test_a_later_write_of_the_same_entity_waits_for_the_earlier() -> None:
    session = Session()
    store = store_with(session)
    try:
        first = submit(store, ["k1", "k2"])
        second = submit(store, ["k1", "k3"], event_ms=2000)
        in_flight = session.take(3)  # k1 (first), k2, k3: not k1 twice
        assert sorted(session.key_of(f) for f in in_flight) == ["k1", "k2", "k3"]
        time.sleep(0.2)
        assert session.pending == []  # the second k1 waits
        for future in in_flight:
            future.answer(APPLIED)
        [later] = session.take(1)
        assert session.key_of(later) == "k1" and 2000 in later.request[1]  # the later version, now
        later.answer(APPLIED)
        wait_for(lambda: first and second, what="both reports")
        assert first[0].statuses == second[0].statuses == [RowStatus.APPLIED, RowStatus.APPLIED]
    finally:
        store.close()


def test_an_unknown_outcome_is_sent_again_and_the_health_listener_hears_of_a_lasting_failure() -> None:
    session = Session()
    store = store_with(session)
    health: list[Any] = []
    store.watch(health.append)
    try:
        report = submit(store, ["k1"])
        timeout = WriteTimeout("Paxos timed out", consistency=ConsistencyLevel.SERIAL, required_responses=2,
                               received_responses=1, write_type=WriteType.CAS)
        requests = []
        for _ in range(7):  # MAX_RETRIES + 1 unknown outcomes in a row
            [future] = session.take(1)
            requests.append(future.request)
            future.fail(timeout)
        assert len(set(requests)) == 1  # the same round each time
        wait_for(lambda: health, what="the health listener")
        assert isinstance(health[0], StoreUnavailable)
        assert not report  # never given up on: the write goes on being retried
        [future] = session.take(1, timeout_s=5)
        future.answer(APPLIED)
        wait_for(lambda: report, what="the report")
        assert report[0].statuses == [RowStatus.APPLIED] and report[0].retries == 7
        assert report[0].errors == {"WriteTimeout/CAS": 7}
        assert health[-1] is None  # and it heard that writes succeed again
    finally:
        store.close()


def test_an_abandoned_write_frees_its_entity_for_the_next() -> None:
    session = Session()
    store = store_with(session)
    try:
        reports: list[WriteReport] = []
        job = store.submit(driver_view(), rows(["k1"]), reports.append)
        [first] = session.take(1)
        later = submit(store, ["k1"], event_ms=2000)
        store.abandon([job])
        first.answer(APPLIED)  # the abandoned request's answer frees k1
        [second] = session.take(1)
        assert 2000 in second.request[1]
        second.answer(APPLIED)
        wait_for(lambda: later, what="the later report")
        assert reports == []  # the abandoned one is never reported
    finally:
        store.close()


def test_a_waited_write_that_keeps_failing_gives_up_and_frees_its_entity() -> None:
    session = Session()
    store = store_with(session)
    try:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                store.write(driver_view(), rows(["k1"]))
            except StoreUnavailable as exc:
                errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        for _ in range(7):
            [future] = session.take(1)
            future.fail(WriteTimeout("timed out", write_type=WriteType.CAS))
        thread.join(10)
        assert errors and "keeps failing" in str(errors[0])
        after = submit(store, ["k1"])
        [future] = session.take(1)
        future.answer(APPLIED)
        wait_for(lambda: after, what="a later write of the same entity")
    finally:
        store.close()


def test_a_node_that_hangs_is_reported_after_the_first_timeout_not_after_every_retry() -> None:
    """Each request to a hung node fails only after the request timeout: six of them would hold the loop's
    partitions unpaused for a minute. Failing for TROUBLE_AFTER_S is enough to tell the loop."""
    from cassandra import OperationTimedOut

    from consumer.cassandra.engine import TROUBLE_AFTER_S

    now = [1000.0]
    session = Session()
    store = CassandraStore(CassandraOptions(keyspace="ks", cache_entries=0), clock=lambda: now[0],
                           retry_backoff=Backoff(1, 5))
    store._session = session
    health: list[Any] = []
    store.watch(health.append)
    try:
        submit(store, ["k1"])
        [future] = session.take(1)
        now[0] += TROUBLE_AFTER_S + 5  # the request timed out on the client's side
        future.fail(OperationTimedOut("no answer within the request timeout"))
        wait_for(lambda: health, what="the health listener after one timeout")
        assert isinstance(health[0], StoreUnavailable)
    finally:
        store.close()


def test_failures_in_a_row_end_with_an_answer() -> None:
    """Three timeouts, then an answer: a later timeout starts a new count, and does not tell the loop."""
    jumped = [0.0]  # time goes on, and the test makes it jump
    session = Session()
    store = CassandraStore(CassandraOptions(keyspace="ks", cache_entries=0),
                           clock=lambda: time.monotonic() + jumped[0], retry_backoff=Backoff(1, 5))
    store._session = session
    health: list[Any] = []
    store.watch(health.append)
    try:
        submit(store, ["k1", "k2"])
        first, _second = session.take(2)  # k2 stays in flight: only k1 fails
        timeout = WriteTimeout("timed out", write_type=WriteType.CAS)
        first.fail(timeout)
        for _ in range(2):
            [again] = session.take(1, timeout_s=10)
            again.fail(timeout)
        [again] = session.take(1, timeout_s=10)  # the third failure is taken in: its retry was sent
        jumped[0] += 5.2
        again.answer([{"[applied]": False, "event_ts": None}])  # an answer: the round learnt, not applied
        [next_round] = session.take(1, timeout_s=10)
        next_round.fail(timeout)  # one failure after the answer
        session.take(1, timeout_s=10)  # its retry went out: the failure was counted by then
        assert health == []
    finally:
        store.close()


def test_the_rows_pending_count_down_as_answers_come_and_room_is_told_once_below_the_window() -> None:
    session = Session()
    store = CassandraStore(CassandraOptions(keyspace="ks", cache_entries=0, max_in_flight=2))
    store._session = session
    rooms: list[None] = []
    store.on_room(lambda: rooms.append(None))
    try:
        assert store.pending() == 0 and store.window == 2
        report = submit(store, ["k1", "k2", "k3"])
        assert store.pending() == 3  # at the window or above: the writer is full, and will say when not
        first, second = session.take(2)  # a window of two requests
        first.answer(APPLIED)
        third = session.take(1)[0]
        assert store.pending() == 2 and rooms == []
        second.answer(APPLIED)
        wait_for(lambda: rooms, what="room")
        assert store.pending() == 1
        third.answer(APPLIED)
        wait_for(lambda: report, what="the report")
        assert store.pending() == 0 and rooms == [None]  # told once, when it fell below the window
        abandoned = store.submit(driver_view(), rows(["k4", "k5"]), lambda _r: None)
        session.take(2)
        store.abandon([abandoned])
        wait_for(lambda: store.pending() == 0, what="abandoned rows no longer pending")
    finally:
        store.close()


def test_a_write_abandoned_before_the_engine_took_it_in_is_never_sent_nor_reported() -> None:
    session = Session()
    store = store_with(session)
    engine = store._engine_for_writes()
    reports: list[WriteReport] = []
    try:
        with engine._lock:  # the engine's thread cannot take the submission in before the abandon
            job = store.submit(driver_view(), rows(["k1"]), reports.append)
            store.abandon([job])
        time.sleep(0.3)
        assert session.sent == 0 and reports == [] and store.pending() == 0
        later = submit(store, ["k1"], event_ms=2000)  # the entity is not held by the abandoned write
        session.take(1)[0].answer(APPLIED)
        wait_for(lambda: later, what="the later report")
    finally:
        store.close()


def test_of_two_waiting_writes_of_one_entity_the_older_is_stale_at_once() -> None:
    session = Session()
    store = store_with(session)
    try:
        first = submit(store, ["k1"], event_ms=1000)
        [in_flight] = session.take(1)
        second = submit(store, ["k1"], event_ms=2000)  # waits for the first
        third = submit(store, ["k1"], event_ms=3000)  # newer than the waiting one: takes its place
        fourth = submit(store, ["k1"], event_ms=1500)  # older than the one waiting: cannot win
        tie = submit(store, ["k1"], event_ms=3000)  # a full tie: the later submission waits instead
        wait_for(lambda: second and third and fourth, what="the superseded reports")
        assert second[0].statuses == third[0].statuses == fourth[0].statuses == [RowStatus.STALE]
        assert session.pending == []  # nothing else was sent meanwhile
        in_flight.answer(APPLIED)
        [last] = session.take(1)
        assert 3000 in last.request[1]
        last.answer(APPLIED)
        wait_for(lambda: first and tie, what="the written reports")
        assert first[0].statuses == tie[0].statuses == [RowStatus.APPLIED]
    finally:
        store.close()


def cached_store(session: Session) -> CassandraStore:
    store = store_with(session, cache_entries=100)
    store._table_exists = lambda view: True  # type: ignore[method-assign]  # a refusal is then the row's own
    return store


def not_applied(key: str, stored_event_ms: dict[str, int]) -> list[dict[str, Any]]:
    """A conditional batch's answer: not applied, with each existing row's key columns and event time."""
    return [{"[applied]": False, "entity_key": key, "feature_name": f, "event_ts": e}
            for f, e in stored_event_ms.items()]


def test_an_entity_written_is_skipped_after_as_certainly_stale_without_a_request() -> None:
    session = Session()
    store = cached_store(session)
    try:
        first = submit(store, ["k1"], event_ms=2000)
        session.take(1)[0].answer(APPLIED)
        wait_for(lambda: first, what="the first report")
        older = submit(store, ["k1"], event_ms=1000)
        wait_for(lambda: older, what="the older write's report")
        assert older[0].statuses == [RowStatus.STALE] and older[0].cache_skips == 1
        assert session.pending == [] and session.sent == 1
    finally:
        store.close()


def test_a_failed_write_leaves_nothing_in_the_stale_cache_for_the_features_it_did_not_write() -> None:
    """Two features found newer (stale), the third refused: the third still holds its old version, so a
    later write between the two must be sent, not skipped as certainly stale."""
    session = Session()
    store = cached_store(session)
    features = [f.name for f in driver_view().features]
    try:
        failed = submit(store, ["k1"], event_ms=1000)
        session.take(1)[0].answer(not_applied("k1", {features[0]: 5000, features[1]: 5000, features[2]: 500}))
        session.take(1)[0].fail(InvalidRequest("refused"))  # the round of the third feature alone
        wait_for(lambda: failed, what="the failed write's report")
        assert failed[0].statuses == [RowStatus.FAILED]
        later = submit(store, ["k1"], event_ms=999)
        [sent] = session.take(1)
        assert 999 in sent.request[1]
        sent.answer(APPLIED)
        wait_for(lambda: later, what="the later write's report")
        assert later[0].statuses == [RowStatus.APPLIED] and later[0].cache_skips == 0
    finally:
        store.close()


def sliced_store(session: Session, monkeypatch: pytest.MonkeyPatch, window: int) -> tuple[CassandraStore, list[Any]]:
    """A store whose engine begins submissions two rows at a time; `begun` records, at each slice, the
    submission, its rows begun before it and the requests sent so far."""
    monkeypatch.setattr(engine_module, "BEGIN_SLICE", 2)
    store = CassandraStore(CassandraOptions(keyspace="ks", cache_entries=0, max_in_flight=window))
    store._session = session
    engine = store._engine_for_writes()
    begun: list[Any] = []
    begin = engine._begin

    def recorded(job: Any, limit: int) -> bool:
        begun.append((job.id, job.begun, session.sent))
        return begin(job, limit)

    engine._begin = recorded  # type: ignore[method-assign]
    return store, begun


def test_answers_that_come_while_a_large_submission_is_begun_are_taken_between_its_slices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session()
    store, begun = sliced_store(session, monkeypatch, window=1)
    try:
        first = submit(store, ["k0"])
        [in_flight] = session.take(1)
        engine = store._engine_for_writes()
        begin = engine._begin

        def answer_during_the_first_slice(job: Any, limit: int) -> bool:
            if job.begun == 0 and len(job.rows) > 1:
                in_flight.answer(APPLIED)  # on the engine's thread, holding the lock: left for the slice's end
            return begin(job, limit)

        engine._begin = answer_during_the_first_slice  # type: ignore[method-assign]
        large = submit(store, ["k1", "k2", "k3", "k4", "k5"])
        for _ in range(5):
            session.take(1)[0].answer(APPLIED)
        wait_for(lambda: first and large, what="both reports")
        assert large[0].statuses == [RowStatus.APPLIED] * 5
        slices = [(begun_before, sent) for job, begun_before, sent in begun if job != begun[0][0]]
        assert [begun_before for begun_before, _sent in slices] == [0, 2, 4]
        # By the second slice k0's answer had been taken and k1 sent, before the rest was begun.
        assert slices[1][1] >= 2
    finally:
        store.close()


def test_a_later_submission_does_not_overtake_the_rows_of_one_still_being_begun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session()
    store, begun = sliced_store(session, monkeypatch, window=16)
    engine = store._engine_for_writes()
    try:
        with engine._lock:  # taken in one turn of the engine or two, the later still begins after the earlier
            large = submit(store, ["k1", "k2", "k3", "k4", "k5", "k6"])
            later = submit(store, ["k6"], event_ms=2000)
        in_flight = session.take(6)
        time.sleep(0.2)
        assert session.pending == []  # the later k6 waits for the earlier, begun in the last slice
        assert [begun_before for _job, begun_before, _sent in begun] == [0, 2, 4, 0]
        for future in in_flight:
            future.answer(APPLIED)
        [after] = session.take(1)
        assert session.key_of(after) == "k6" and 2000 in after.request[1]
        after.answer(APPLIED)
        wait_for(lambda: large and later, what="both reports")
        assert large[0].statuses == [RowStatus.APPLIED] * 6 and later[0].statuses == [RowStatus.APPLIED]
    finally:
        store.close()


def test_a_submission_abandoned_while_it_is_begun_sends_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    session = Session()
    store, _begun = sliced_store(session, monkeypatch, window=16)
    engine = store._engine_for_writes()
    begin = engine._begin
    reports: list[WriteReport] = []

    def abandon_in_the_second_slice(job: Any, limit: int) -> bool:
        done = begin(job, limit)
        if job.begun == 4:
            store.abandon([job.id])  # on the engine's thread: taken when the slice lets the lock go
        return done

    engine._begin = abandon_in_the_second_slice  # type: ignore[method-assign]
    try:
        store.submit(driver_view(), rows(["k1", "k2", "k3", "k4", "k5", "k6"]), reports.append)
        sent = session.take(2)  # the first slice's rows went out; the second's were abandoned before
        time.sleep(0.2)
        assert session.sent == 2 and store.pending() == 0
        for future in sent:
            future.answer(APPLIED)
        later = submit(store, ["k5"], event_ms=2000)  # never begun for the abandoned one: free at once
        session.take(1)[0].answer(APPLIED)
        wait_for(lambda: later, what="the later report")
        assert reports == []
    finally:
        store.close()


def test_a_retry_scheduled_by_an_answer_the_engine_takes_itself_is_sent_when_due() -> None:
    session = Session()
    store = store_with(session)
    engine = store._engine_for_writes()
    timeout = WriteTimeout("timed out", write_type=WriteType.CAS)
    failing: list[Future] = []

    class Waiting(list):  # type: ignore[type-arg]
        """The engine's retries: the answer comes while its thread looks at them, holding the lock, so the
        engine takes it (and schedules the retry) itself on leaving, after it computed how long to sleep."""

        def __getitem__(self, index: Any) -> Any:
            if isinstance(index, slice) and failing and threading.current_thread() is engine:
                failing.pop().fail(timeout)
            return super().__getitem__(index)

    try:
        report = submit(store, ["k1"])
        [first] = session.take(1)
        engine._waiting = Waiting()
        failing.append(first)
        engine._inbox.put(("wake",))  # one more turn of the engine's loop, with nothing else to do
        [again] = session.take(1, timeout_s=5)  # the retry, sent after its backoff of a few ms
        again.answer(APPLIED)
        wait_for(lambda: report, what="the report")
        assert report[0].statuses == [RowStatus.APPLIED] and report[0].retries == 1
    finally:
        store.close()
