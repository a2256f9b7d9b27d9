"""The writer's threads: submissions, statements and retry timers on the engine's own thread; the
driver's answers on the driver's I/O thread.

Submissions come in from the loop through a queue to the engine's thread, which prepares their statements
(a call that may block) and wakes for retries that are due. Answers are taken on the driver's I/O thread,
which sends the next rounds at once, as a raw `execute_async` loop does: handing each answer to another
thread cost a thread switch and a wait for the GIL per write. The write state (consumer/cassandra/window.py)
is shared by the two threads under one lock, which an answer never waits for: it leaves itself in
`_answers`, and whichever thread holds the lock takes it before letting go.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from consumer.cassandra.rounds import Entry, Job
from consumer.cassandra.statements import Statements
from consumer.cassandra.window import MAX_RETRIES, RETRY_BACKOFF, TROUBLE_AFTER_S, WriteWindow
from consumer.core.errors import StoreUnavailable
from consumer.core.outcomes import drain
from consumer.core.policy import Backoff
from consumer.core.store import Done, EncodedRows, RowStatus, WriteReport
from consumer.core.views import FeatureView

__all__ = ["MAX_RETRIES", "RETRY_BACKOFF", "TROUBLE_AFTER_S", "WriteEngine"]

log = logging.getLogger(__name__)

# Rows of a submission turned into writes per hold of the write state's lock (about a millisecond of CPU).
BEGIN_SLICE = 256


class WriteEngine(WriteWindow, threading.Thread):
    def __init__(self, session: Callable[[], Any], prepare: Callable[[FeatureView], Statements],
                 translate: Callable[[BaseException, FeatureView], Exception],
                 table_exists: Callable[[FeatureView], bool], max_in_flight: int, cache_entries: int,
                 clock: Callable[[], float], wall: Callable[[], float], retry_backoff: Backoff = RETRY_BACKOFF) -> None:
        WriteWindow.__init__(self, session, translate, table_exists, max_in_flight, cache_entries, clock, wall,
                             retry_backoff)
        threading.Thread.__init__(self, name="cassandra-writes", daemon=True)
        self._prepare = prepare
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._counting = threading.Lock()  # `submit` may be called from more than one thread
        self._answers: deque[tuple[Entry, Any, BaseException | None, float]] = deque()
        self._abandons: deque[list[int]] = deque()
        self._stopping = False
        self._last_id = 0  # the latest submission the engine's thread took in
        self._abandoned_early: set[int] = set()
        # Submissions whose statements could not be prepared yet (Cassandra unreachable), in order: a later
        # submission never overtakes them. The engine thread's alone.
        self._unprepared: deque[Job] = deque()
        # Submissions prepared and not yet begun in full, in order (the engine thread's alone).
        self._beginning: deque[Job] = deque()
        self._prepare_failures = 0
        self._prepare_failing_since = 0.0
        self._prepare_at = 0.0

    # ------------------------------------------------------------------ from any thread

    def submit(self, view: FeatureView, rows: EncodedRows, done: Done, give_up: bool = False) -> int:
        n = len(rows)
        report = WriteReport(statuses=[RowStatus.STALE] * n, sent_at=[None] * n, done_at=[0.0] * n)
        with self._counting:  # ids reach the engine's thread in order
            job = Job(next(self._ids), view, rows, done, give_up, report, left=n)
            self._submitted_rows += n
            self._inbox.put(("submit", job))
        return job.id

    def abandon(self, ids: list[int]) -> None:
        # Taken before the next answer is (answers do not pass through the engine's thread).
        self._abandons.append(ids)
        self._pump()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._inbox.put(("stop",))
        if self.is_alive():
            self.join(timeout_s)

    # ------------------------------------------------------------------ the engine's thread

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - logged in `_broken`, which fails every write left
            with self._lock:
                self._broken(exc)

    def _broken(self, exc: BaseException) -> None:
        """A bug here must not leave the loop waiting for answers forever (called holding the lock)."""
        log.exception("the writer failed", exc_info=exc)
        error = StoreUnavailable(f"the writer failed: {exc!r}")
        self._stopping = True
        for job in list(self._jobs.values()):
            job.report.error = error
            self._drop(job)
            self._complete(job)

    def _serve(self) -> None:
        while not self._stopping:
            with self._locked():
                wakeups = [r.at for r in self._waiting[:1]] + ([self._prepare_at] if self._unprepared else [])
                if self._beginning:
                    wakeups = [0.0]
            timeout = max(0.0, min(wakeups) - self._clock()) if wakeups else None
            try:
                first = self._inbox.get(timeout=timeout)
            except queue.Empty:
                first = None
            items = drain(self._inbox, first)
            with self._locked():
                for item in items:
                    getattr(self, "_on_" + item[0])(*item[1:])
                now = self._clock()
                if self._unprepared and self._prepare_at <= now:
                    self._prepare_pending()
                while self._waiting and self._waiting[0].at <= now:
                    self._ready.append(heapq.heappop(self._waiting).entry)
                self._begin_some()

    def _begin_some(self) -> None:
        """Up to `BEGIN_SLICE` rows of the submissions waiting to begin, in order. `_serve` lets the lock go
        after each slice, and the answers that came meanwhile are taken and their rounds sent: begun in one go, a
        submission of thousands of rows held the lock for tens of milliseconds while every answer waited,
        and the window emptied."""
        budget = BEGIN_SLICE
        while self._beginning and budget > 0:
            job = self._beginning[0]
            begun = job.begun
            if self._begin(job, budget):
                self._beginning.popleft()
            budget -= max(1, job.begun - begun)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The write state, and on leaving it: the answers that came meanwhile, the rounds they free."""
        with self._lock:
            self._take_abandons()
            yield
            self._take_answers()
        self._pump()

    def _pump(self) -> None:
        """Take the answers waiting, unless another thread holds the lock: it takes them before it lets go."""
        while (self._answers or self._abandons) and not self._stopping:
            if not self._lock.acquire(blocking=False):
                return
            try:
                self._take_answers()
            except BaseException as exc:  # noqa: BLE001 - on the driver's thread nobody else would hear of it
                self._broken(exc)
            finally:
                self._lock.release()

    def _take_abandons(self) -> None:
        while self._abandons:
            self._on_abandon(self._abandons.popleft())

    def _take_answers(self) -> None:
        self._take_abandons()
        answers = self._answers
        while answers:
            self._on_answer(*answers.popleft())
        self._send_ready()
        if self._troubled and not self._jobs:
            # Nothing left to write (what failed was given up): new writes will tell afresh.
            self._troubled = False
            self._tell(None)

    def _answered(self, entry: Entry, rows: Any, error: BaseException | None, started: float) -> None:
        """The driver's callback (on its I/O thread, or at once in `_send` when the answer was there)."""
        self._answers.append((entry, rows, error, started))
        self._pump()

    def _wake(self) -> None:
        # The engine's thread may be asleep until a later time, or for good. On its own thread too: it may
        # have worked out how long to sleep before taking the answer that brought this retry.
        self._inbox.put(("wake",))

    def _on_wake(self) -> None:
        pass

    def _on_stop(self) -> None:
        self._stopping = True

    def _on_abandon(self, ids: list[int]) -> None:
        for job_id in ids:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                self._drop(job)
            elif job_id > self._last_id:  # still on its way through the inbox
                self._abandoned_early.add(job_id)
        self._drop_waiting_entries()

    def _on_submit(self, job: Job) -> None:
        self._last_id = job.id
        if job.id in self._abandoned_early:
            self._abandoned_early.discard(job.id)
            self._drop(job)
            return
        self._jobs[job.id] = job
        self._unprepared.append(job)
        if len(self._unprepared) == 1:
            self._prepare_pending()

    def _prepare_pending(self) -> None:
        """Start the submissions waiting for their statements, in order, while they can be prepared."""
        while self._unprepared:
            job = self._unprepared[0]
            if job.abandoned:
                self._unprepared.popleft()
                continue
            attempt = self._clock()
            try:
                job.statements = self._prepare(job.view)
            except StoreUnavailable as exc:
                self._prepare_failures += 1
                if self._prepare_failures == 1:
                    self._prepare_failing_since = attempt
                if job.give_up and self._prepare_failures > MAX_RETRIES:
                    self._unprepared.popleft()
                    self._fail(job, exc)
                    continue
                delay_ms = self._backoff.delay_ms(self._prepare_failures)
                self._trouble(exc, self._prepare_failures, self._prepare_failing_since, delay_ms)
                self._prepare_at = self._clock() + delay_ms / 1000
                return
            except Exception as exc:  # noqa: BLE001 - a misconfiguration: the report carries it to the caller
                self._unprepared.popleft()
                self._fail(job, exc)
                continue
            self._prepare_failures = 0
            self._unprepared.popleft()
            self._beginning.append(job)
