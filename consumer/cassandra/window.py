"""The guarded writes in flight, as state and its rules: what the writer's two threads share.

* a sliding window of at most `window` requests, as the driver's `execute_concurrent` keeps;
* one write per entity in flight: a later submission of the same entity waits behind the earlier, so
  the later record still wins a full tie;
* the stale cache: an entity whose stored version is known to be newer needs no request;
* retries: a request that failed for a reason of the world's is sent again after a pause (the same
  round: after an unknown outcome the guard makes that safe); after more than `MAX_RETRIES` in a
  row the health listener is told, and the request goes on being retried at the longest pause until it is
  answered. A submission made with `give_up` fails then instead (StoreUnavailable in its report);
* the rows submitted without an outcome yet (`pending`), which tell the loop whether the writer has room.

Every method here runs holding the engine's lock (consumer/cassandra/engine.py), on whichever thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer.cassandra.errors import Failure, classify, describe
from consumer.cassandra.rounds import Entry, Job, Task
from consumer.cassandra.stale_cache import StaleCache
from consumer.core import guard
from consumer.core.errors import StoreUnavailable, TransientError
from consumer.core.guard import FirstGuess
from consumer.core.policy import Backoff
from consumer.core.store import HealthListener, RowStatus
from consumer.core.views import FeatureView

log = logging.getLogger(__name__)

MAX_RETRIES = 6
# The pause before a round is sent again after a transient error: 100 ms, doubling, at most 2 s.
RETRY_BACKOFF = Backoff(100, 2000)
# The loop hears of a failure once more than MAX_RETRIES came in a row, or once a write has been failing this long,
# whichever comes first (a node that hangs fails each request only after the request timeout).
TROUBLE_AFTER_S = 5.0


def when_answered(future: Any, callback: Callable[..., None], errback: Callable[..., None], *args: Any) -> None:
    """Call `callback(rows, *args)` or `errback(error, *args)` when the driver's request `future` is answered,
    and let the request's objects go as soon as nothing uses them.

    cassandra-driver's ResponseFuture keeps its request timer after cancelling it, and the timer holds the
    future's own bound method: a reference cycle, so each request's future, statement, message, event and
    our callbacks' arguments (about 36 objects per guarded write) outlived it until the cyclic collector
    found them. Requests live a few ms, long enough to reach the older generations, whose full collections
    then took 150-300 ms of CPU each with the GIL held, some 0.1 ms per write in a backlog
    (docs/performance.md). So the timer is dropped once the driver has cancelled it (it does before any
    callback), and the future is held weakly: the arguments it keeps must not lead back to it."""
    ref = weakref.ref(future)
    future.add_callbacks(callback=_drop_timer_then, callback_args=(ref, callback, args),
                         errback=_drop_timer_then, errback_args=(ref, errback, args))


def _drop_timer_then(result: Any, future: weakref.ref[Any], then: Callable[..., None], args: tuple[Any, ...]) -> None:
    answered = future()
    if answered is not None:
        answered._timer = None
    then(result, *args)


@dataclass(order=True)
class Retry:
    at: float
    seq: int
    entry: Entry = field(compare=False)


class WriteWindow:
    def __init__(self, session: Callable[[], Any], translate: Callable[[BaseException, FeatureView], Exception],
                 table_exists: Callable[[FeatureView], bool], window: int, cache_entries: int,
                 clock: Callable[[], float], wall: Callable[[], float], retry_backoff: Backoff) -> None:
        self._session = session
        self._translate = translate
        self._table_exists = table_exists
        self.window = window
        self._backoff = retry_backoff
        self._clock = clock
        self._wall = wall
        self._seq = itertools.count()
        self.health: HealthListener | None = None
        self.room: Callable[[], None] | None = None
        self._jobs: dict[int, Job] = {}
        self._ready: deque[Entry] = deque()
        self._waiting: list[Retry] = []
        self._active: dict[tuple[str, str], deque[Entry]] = {}  # entity -> its entries, the first in flight
        self._in_flight = 0
        self._troubled = False
        self._cache = StaleCache(cache_entries) if cache_entries else None
        self._first_guess = FirstGuess()
        # Rows submitted, and rows with an outcome (or given up): each counter has one writer, so `pending`
        # needs no lock. `_room_wanted`: the loop found no room and waits to hear of it.
        self._submitted_rows = 0
        self._settled_rows = 0
        self._room_wanted = False

    def pending(self) -> int:
        """Rows submitted without an outcome yet. At the window or above, `room` is called (from a writer's
        thread) once the rows pending fall below it."""
        pending = self._submitted_rows - self._settled_rows
        if pending >= self.window:
            self._room_wanted = True
            pending = self._submitted_rows - self._settled_rows  # an outcome may have come in between
        return pending

    def _settled(self, rows: int) -> None:
        self._settled_rows += rows
        if self._room_wanted and self._submitted_rows - self._settled_rows < self.window:
            self._room_wanted = False
            if self.room is not None:
                self.room()

    def _answered(self, entry: Entry, rows: Any, error: BaseException | None, started: float) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        """A retry is due earlier than the engine's thread was going to look."""
        raise NotImplementedError

    def _begin(self, job: Job, limit: int) -> bool:
        """Turn up to `limit` more of the job's rows into writes; True once every row is begun."""
        if job.abandoned:
            return True
        if len(job.rows) == 0:
            self._complete(job)
            return True
        rows, features, table = job.rows, [f.name for f in job.view.features], job.view.table
        start = job.begun
        end = min(len(rows), start + limit)
        job.begun = end
        columns = [(f, rows.values[f][start:end]) for f in features]
        event_ms, created_ms = rows.event_ms[start:end].tolist(), rows.created_ms[start:end].tolist()
        guess = self._first_guess.guess()
        for j, key in enumerate(rows.entity_keys[start:end]):
            i = start + j
            task = Task(i, key, (event_ms[j], created_ms[j]), {f: column[j] for f, column in columns},
                        guess=guess, remaining=list(features))
            entry = Entry(job, task, (table, key))
            queued = self._active.get(entry.entity)
            if queued:
                self._queue_behind(queued, entry)
            else:
                self._active[entry.entity] = deque([entry])
                self._start(entry)
        return end == len(rows)

    def _queue_behind(self, queued: deque[Entry], entry: Entry) -> None:
        """The entity has a write in flight: the entry waits for it. At most one write of an entity waits:
        of two waiting, the older version cannot end up stored, so it is stale at once (in a full tie the
        later submission wins, as the later offset of a partition does). Without this, a hot entity in each
        of many small batches would make them finish one round trip after another."""
        waiting = queued[-1] if len(queued) > 1 and not queued[-1].job.abandoned else None
        if waiting is None:
            queued.append(entry)
        elif entry.task.ours >= waiting.task.ours:
            queued[-1] = entry
            self._finish(waiting, RowStatus.STALE)
        else:
            self._finish(entry, RowStatus.STALE)

    def _start(self, entry: Entry) -> None:
        """The entity's turn: skip it if it is certainly stale, else queue its first round."""
        bound = self._cache.get(entry.entity) if self._cache is not None else None
        task = entry.task
        if guard.certainly_stale(task.ours, bound):
            entry.job.report.cache_skips += 1
            self._finish(entry, RowStatus.STALE)
            return
        task.probe = bound is None
        task.guess = task.guess or bound is not None
        self._ready.append(entry)

    def _send_ready(self) -> None:
        while self._ready and self._in_flight < self.window:
            entry = self._ready.popleft()
            if entry.job.abandoned:
                self._release(entry)
                continue
            try:
                steps = entry.task.next_round()
            except StoreUnavailable as exc:  # no agreement after MAX_ROUNDS: contention; start afresh later
                entry.task.rounds = 0
                self._retry(entry, exc)
                continue
            if not steps:
                self._finish(entry, entry.task.status)
                continue
            assert entry.job.statements is not None
            request = entry.job.statements.request(entry.task.key, entry.task.ours, entry.task.values, steps)
            self._send(request, entry)

    def _send(self, request: Any, entry: Entry) -> None:
        started = self._clock()
        report, index = entry.job.report, entry.task.index
        if report.sent_at[index] is None:
            report.sent_at[index] = started
        self._in_flight += 1
        try:
            future = self._session().execute_async(request)
        except Exception as exc:  # noqa: BLE001 - raised before sending (no host): answered like an error
            self._answered(entry, None, exc, started)
            return
        when_answered(future, self._took_rows, self._took_error, entry, started)

    def _took_rows(self, rows: Any, entry: Entry, started: float) -> None:
        self._answered(entry, rows, None, started)

    def _took_error(self, error: BaseException, entry: Entry, started: float) -> None:
        self._answered(entry, None, error, started)

    def _on_answer(self, entry: Entry, rows: Any, error: BaseException | None, started: float) -> None:
        self._in_flight -= 1
        job, task = entry.job, entry.task
        if job.abandoned:
            self._release(entry)
            return
        job.report.requests += 1
        job.report.latencies.append(self._clock() - started)
        if error is None:
            task.retries = 0  # answered: the failures in a row are over
            if self._troubled:
                self._troubled = False
                self._tell(None)
            applied, existed = task.absorb(rows)
            if not applied:
                job.report.not_applied += 1
            if existed is not None:
                self._first_guess = self._first_guess.observe(existed)
            if task.done:
                self._finish(entry, task.status)
            else:
                self._ready.append(entry)
            return
        kind = classify(error)
        if kind is Failure.ROW and not self._table_exists(job.view):
            kind = Failure.FATAL
        if kind is Failure.FATAL:
            self._fail(job, self._translate(error, job.view))
            self._release(entry)
        elif kind is Failure.ROW:
            job.report.failures[task.index] = f"Cassandra refused the write: {error}"
            self._finish(entry, RowStatus.FAILED)
        else:
            job.report.retries += 1
            job.report.errors[describe(error)] += 1
            self._retry(entry, StoreUnavailable(f"Cassandra failed a write to {job.view.table}: {error}"), started)

    def _retry(self, entry: Entry, error: TransientError, started: float | None = None) -> None:
        """Unknown outcome or a transient refusal: the same round again after a pause."""
        task = entry.task
        task.retries += 1
        if task.retries == 1:
            task.failing_since = self._clock() if started is None else started
        if task.retries > MAX_RETRIES and entry.job.give_up:
            self._fail(entry.job, StoreUnavailable(f"Cassandra keeps failing writes to {entry.job.view.table}: "
                                                    f"{error}"))
            self._release(entry)
            return
        delay_ms = self._backoff.delay_ms(task.retries)
        self._trouble(error, task.retries, task.failing_since, delay_ms)
        retry = Retry(self._clock() + delay_ms / 1000, next(self._seq), entry)
        heapq.heappush(self._waiting, retry)
        if self._waiting[0] is retry:
            self._wake()

    def _trouble(self, error: TransientError, failures: int, failing_since: float, delay_ms: int) -> None:
        """Tell the loop, once, when a write has failed more than MAX_RETRIES times in a row or for TROUBLE_AFTER_S."""
        if self._troubled or (failures <= MAX_RETRIES and self._clock() - failing_since < TROUBLE_AFTER_S):
            return
        self._troubled = True
        log.warning("Cassandra keeps failing (%s); retrying in %d ms until it answers", error, delay_ms)
        self._tell(error)

    def _finish(self, entry: Entry, status: RowStatus) -> None:
        job, task = entry.job, entry.task
        job.report.statuses[task.index] = status
        job.report.done_at[task.index] = self._wall()
        bound = task.lower_bound()
        if bound is not None and self._cache is not None:
            self._cache.raise_to(entry.entity, bound)
        job.left -= 1
        self._release(entry)
        if job.left == 0:
            self._complete(job)
        self._settled(1)

    def _release(self, entry: Entry) -> None:
        """The entity's write is over: the next one of the same entity may go."""
        entries = self._active.get(entry.entity)
        if not entries or entries[0] is not entry:
            return
        entries.popleft()
        while entries and entries[0].job.abandoned:
            entries.popleft()
        if entries:
            self._start(entries[0])
        else:
            del self._active[entry.entity]

    def _fail(self, job: Job, error: Exception) -> None:
        """The whole submission failed: its report carries the error. Its entries waiting their turn leave
        at once; one in flight or due for a retry frees its entity when it comes up (never two at once)."""
        job.report.error = error
        self._drop(job)
        self._drop_waiting_entries()
        self._complete(job)

    def _drop(self, job: Job) -> None:
        """No more outcomes for the job's rows: they stop counting as pending."""
        job.abandoned = True
        self._settled(job.left)
        job.left = 0

    def _drop_waiting_entries(self) -> None:
        for entity, entries in list(self._active.items()):
            self._active[entity] = deque(e for i, e in enumerate(entries) if i == 0 or not e.job.abandoned)

    def _complete(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        try:
            job.done(job.report)
        except Exception:
            log.exception("a write's completion callback failed")

    def _tell(self, error: TransientError | None) -> None:
        if self.health is not None:
            self.health(error)
