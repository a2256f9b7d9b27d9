"""In-memory stand-ins for the pipeline's ports, for pure tests of the pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from consumer.core.errors import DeadLetterUnavailable, StoreUnavailable
from consumer.core.guard import NULL_MS
from consumer.core.store import Done, EncodedRows, HealthListener, RowStatus, StoredCell, WriteReport
from consumer.core.views import FeatureView


def cell_version(cell: StoredCell) -> tuple[int, int]:
    return (cell.event_ms, NULL_MS if cell.created_ms is None else cell.created_ms)


class FakeStore:
    """The guard's rule stated directly: a value is written when its (event, created) version is at least
    the stored one (a missing created time is the oldest). The contract suite checks that Cassandra's
    lightweight transactions end in the same state as this model."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[str, str], StoredCell]] = {}
        self._down = False
        self.writes = 0
        self.budgets: list[float | None] = []
        # Submissions not answered yet: while down (as the real writer retries), or while `hold` is set
        # (to answer them later, in any order, with `release`).
        self.hold = False
        self.held: list[tuple[int, FeatureView, EncodedRows, Done]] = []
        self.submissions = 0
        self.submitted: list[EncodedRows] = []
        self.abandoned: set[int] = set()
        self.health: HealthListener | None = None
        # With one request "in flight", the fake writer has room only while it holds nothing.
        self.window = 1
        self.room: Callable[[], None] | None = None
        self._room_wanted = False

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, down: bool) -> None:
        """Down: submissions wait, and the health listener hears of it; up again: they are answered, in order."""
        self._down = down
        if self.health is not None:
            self.health(StoreUnavailable("fake store is down") if down else None)
        if not down and not self.hold:
            self.release()

    def watch(self, listener: HealthListener) -> None:
        self.health = listener

    def on_room(self, listener: Callable[[], None]) -> None:
        self.room = listener

    def pending(self) -> int:
        pending = sum(len(rows) for job, _view, rows, _done in self.held if job not in self.abandoned)
        self._room_wanted = self._room_wanted or pending >= self.window
        return pending

    def submit(self, view: FeatureView, rows: EncodedRows, done: Done) -> int:
        self.submissions += 1
        self.submitted.append(rows)
        job = self.submissions
        self.held.append((job, view, rows, done))
        if not self.hold and not self._down:
            self.release([job])
        return job

    def release(self, order: list[int] | None = None) -> None:
        """Answer the held submissions (those numbered in `order`, in that order; else all, in order)."""
        chosen = [h for h in self.held if order is None or h[0] in order]
        if order is not None:
            chosen.sort(key=lambda h: order.index(h[0]))
        for held in chosen:
            self.held.remove(held)
            job, view, rows, done = held
            if job not in self.abandoned:
                done(self._apply(view, rows))
        if self._room_wanted and self.room is not None and self.pending() < self.window:
            self._room_wanted = False
            self.room()

    def abandon(self, submissions: Iterable[int]) -> None:
        self.abandoned.update(submissions)

    def write(self, view: FeatureView, rows: EncodedRows, budget_s: float | None = None) -> WriteReport:
        self.budgets.append(budget_s)
        if self._down:
            raise StoreUnavailable("fake store is down")
        return self._apply(view, rows)

    def _apply(self, view: FeatureView, rows: EncodedRows) -> WriteReport:
        table = self.tables.setdefault(view.table, {})
        statuses = []
        for i, key in enumerate(rows.entity_keys):
            event, created = int(rows.event_ms[i]), int(rows.created_ms[i])
            written = stale = 0
            for feature in view.features:
                cell = table.get((key, feature.name))
                if cell is None or (event, created) >= cell_version(cell):
                    table[(key, feature.name)] = StoredCell(
                        rows.values[feature.name][i], event, None if created == NULL_MS else created
                    )
                    written += 1
                else:
                    stale += 1
            statuses.append(RowStatus.PARTIAL if written and stale else
                            RowStatus.APPLIED if written else RowStatus.STALE)
        self.writes += len(rows)
        n = len(rows)
        return WriteReport(statuses, requests=n, sent_at=[0.0] * n, done_at=[0.0] * n)

    def read(self, view: FeatureView, entity_key: str) -> dict[str, StoredCell]:
        table = self.tables.get(view.table, {})
        return {f: cell for (k, f), cell in table.items() if k == entity_key}

    def seed(self, view: FeatureView, key: str, feature: str, cell: StoredCell) -> None:
        """A blind write, as Feast's own materialization would do."""
        self.tables.setdefault(view.table, {})[(key, feature)] = cell

    def create_schema(self, views: Iterable[FeatureView], create_keyspace: bool) -> list[str]:
        for view in views:
            self.tables.setdefault(view.table, {})
        return []

    def ping(self) -> str:
        if self.down:
            raise StoreUnavailable("fake store is down")
        return "fake"

    def close(self) -> None:
        pass


class FakeClock:
    """Time that moves only when told to (or when the code under test sleeps)."""

    def __init__(self, wall: float = 1_700_003_600.0) -> None:
        self.t = 0.0
        self.wall0 = wall

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def wait_on(self, answers: Any, timeout_s: float) -> Any:
        """A wait for the loop's outcomes: at once what is there, else the time passes with nothing."""
        try:
            return answers.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty
            self.t += max(0.0, timeout_s)
            return None


class FakeSource:
    """A scripted consumer-group member: messages per partition, an assignment, recorded commits."""

    def __init__(self, listener: Any, clock: FakeClock, group_id: str = "g") -> None:
        self.listener = listener
        self.clock = clock
        self.group_id = group_id
        self.queues: dict[tuple[str, int], list[Any]] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.paused: set[tuple[str, int]] = set()
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []
        self.closed = False
        self.pending_rebalance: list[tuple[str, list[tuple[str, int]]]] = []
        # Asynchronous commits fail while this is set (a rebalance making the generation stale); their
        # failure is reported inside the next poll, as librdkafka's commit callback is.
        self.fail_async_commits = False
        self._failed_commits: list[tuple[str, int]] = []

    def add(self, messages: list[Any]) -> None:
        for m in messages:
            self.queues.setdefault((m.topic(), m.partition()), []).append(m)

    def subscribe(self) -> None:
        pass

    def rebalance(self, kind: str, partitions: list[tuple[str, int]]) -> None:
        """Deliver on the next poll, as librdkafka does."""
        self.pending_rebalance.append((kind, partitions))

    def poll(self, max_messages: int, timeout_s: float) -> list[Any]:
        if self._failed_commits:
            failed, self._failed_commits = self._failed_commits, []
            self.listener.on_commit_failed(failed, "ILLEGAL_GENERATION")
        while self.pending_rebalance:
            kind, partitions = self.pending_rebalance.pop(0)
            if kind == "assign":
                self.assigned |= set(partitions)
                self.listener.on_assign(partitions)
            elif kind == "revoke":
                self.listener.on_revoke(partitions)
                self.assigned -= set(partitions)
            else:
                self.listener.on_lost(partitions)
                self.assigned -= set(partitions)
        out: list[Any] = []
        for tp in sorted(self.assigned - self.paused):
            queue = self.queues.get(tp, [])
            while queue and len(out) < max_messages:
                out.append(queue.pop(0))
        if not out:
            self.clock.advance(timeout_s)
        return out

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.assigned)

    def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        self.paused |= set(partitions)

    def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        self.paused -= set(partitions)

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        if asynchronous and self.fail_async_commits:
            self._failed_commits.extend(offsets)
            return
        self.commits.append((dict(offsets), asynchronous))

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for offsets, _ in self.commits:
            out.update(offsets)
        return out

    def close(self) -> None:
        self.closed = True


class FakeDeadLetters:
    """Acknowledges (or, while down, refuses) each record at the next `poll`, as librdkafka's callbacks come."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.down = False
        self.sends = 0
        self._pending: list[tuple[Any, Any]] = []

    def send(self, rejected: list[Any], acknowledged: Any) -> None:
        self.sends += 1
        self._pending.extend((item, acknowledged) for item in rejected)

    def poll(self) -> None:
        pending, self._pending = self._pending, []
        for item, acknowledged in pending:
            if self.down:
                acknowledged(item, DeadLetterUnavailable("fake dead-letter topic is down"))
            else:
                self.sent.append(item)
                acknowledged(item, None)

    def close(self) -> None:
        pass
