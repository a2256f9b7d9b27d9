"""One entity's guarded write, as a sequence of rounds.

Each round sends, for the features not yet settled, the conditional statement the guard chooses from
what is known of their stored rows (consumer/core/guard.py). An applied round settles its features; a
round that is not applied teaches the stored state of its rows, and the next round uses it. A feature
whose stored version is newer is settled as stale without a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from consumer.cassandra.statements import Statements
from consumer.core import guard
from consumer.core.errors import StoreUnavailable
from consumer.core.guard import Known, Op, Step, Version
from consumer.core.store import Done, EncodedRows, RowStatus, WriteReport
from consumer.core.views import FeatureView

MAX_ROUNDS = 8

_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


# Slotted: the writer makes a Task and an Entry per row, and the cyclic collector scans each object it tracks
# (an unslotted instance is two: the object and its __dict__).
@dataclass(slots=True)
class Task:
    index: int  # the row's position in the rows given to the writer
    key: str
    ours: Version
    values: dict[str, bytes]
    guess: bool  # what to try for features nothing is known of: UPDATE if they probably exist, else INSERT
    remaining: list[str]
    known: dict[str, Known] = field(default_factory=dict)
    stale_versions: list[Version] = field(default_factory=list)
    written: int = 0
    stale: int = 0
    steps: dict[str, Step] = field(default_factory=dict)  # the round in flight (re-sent as is after a retry)
    rounds: int = 0
    retries: int = 0
    failing_since: float = 0.0  # when the first of the failed requests in a row was sent
    # True when nothing was known of the entity (no cache entry): its first answer teaches FirstGuess.
    probe: bool = True

    def next_round(self) -> dict[str, Step]:
        """The steps of the next round (the same again after a retry); empty when every feature is settled.

        Raises StoreUnavailable when the entity does not settle within MAX_ROUNDS (contention).
        """
        if self.steps:
            return self.steps
        if self.rounds >= MAX_ROUNDS:
            raise StoreUnavailable(f"entity {self.key}: no agreement after {MAX_ROUNDS} rounds (contention)")
        if not self.known:  # the common first round: one decision for every feature
            step = guard.decide(self.ours, None, self.guess)
            assert step is not None  # nothing known is never stale
            self.steps = dict.fromkeys(self.remaining, step)
            self.rounds += 1
            return self.steps
        for feature in list(self.remaining):
            step = guard.decide(self.ours, self.known.get(feature), self.guess)
            if step is None:
                self.remaining.remove(feature)
                self.stale += 1
                version = self.known[feature].version
                self.stale_versions.append(version if version is not None else self.ours)
            else:
                self.steps[feature] = step
        self.rounds += 1
        return self.steps

    def absorb(self, rows: list[dict[str, Any]]) -> tuple[bool, bool | None]:
        """Take the answer to the round in flight: (applied, whether the rows existed if this answer is
        the entity's first and tells, else None)."""
        applied = bool(rows and rows[0].get("[applied]"))
        sent, self.steps = self.steps, {}
        existed: bool | None
        if applied:
            self.written += len(sent)
            if len(sent) == len(self.remaining):
                self.remaining.clear()
            else:
                for feature in sent:
                    self.remaining.remove(feature)
            # An applied UPDATE means the rows existed; an applied INSERT means they did not.
            existed = next(iter(sent.values())).op is not Op.INSERT
        else:
            learnt = guard.learn(sent, answer_rows(sent, rows))
            self.known.update(learnt)
            existed = any(k.exists for k in learnt.values())
        probe, self.probe = self.probe, False
        return applied, existed if probe else None

    @property
    def done(self) -> bool:
        return not self.remaining

    @property
    def status(self) -> RowStatus:
        if self.written and self.stale:
            return RowStatus.PARTIAL
        return RowStatus.APPLIED if self.written else RowStatus.STALE

    def lower_bound(self) -> Version | None:
        """A version every feature row of the entity holds now, for the stale cache (None: nothing known, or
        a feature left unsettled: a failed write may have found some features stale and written none of the
        others, which hold older versions)."""
        if self.remaining:
            return None
        if not self.stale_versions:  # the common case: every feature written, or nothing learnt
            return self.ours if self.written else None
        return guard.lower_bound_after(self.ours, bool(self.written), self.stale_versions)


def millis(value: Any) -> int | None:
    """A timestamp column as the driver returns it (a naive UTC datetime) -> ms since the epoch."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MS
    return int(value)


def answer_rows(sent: Mapping[str, Step], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stored rows a not-applied answer revealed, by feature name.

    A batch's answer carries each existing row's key columns. A single UPDATE's answer carries only the
    columns of its condition (none at all when the row is missing), so it is attributed to its one feature.
    """
    def in_millis(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: millis(v) if k in ("event_ts", "created_ts") else v for k, v in row.items() if k != "[applied]"}

    if len(sent) == 1 and rows and rows[0].get("feature_name") is None:
        [feature] = sent
        return {feature: in_millis(rows[0])} if "event_ts" in rows[0] else {}
    return {r["feature_name"]: in_millis(r) for r in rows if r.get("feature_name") is not None}


# --------------------------------------------------------------------------- what the writer holds


@dataclass(eq=False, slots=True)
class Job:
    id: int
    view: FeatureView
    rows: EncodedRows
    done: Done
    give_up: bool  # fail on MAX_RETRIES instead of retrying on (a caller that waits)
    report: WriteReport
    left: int = 0  # rows without an outcome yet
    begun: int = 0  # rows turned into writes so far (a large job is begun a slice at a time)
    statements: Statements | None = None
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class Entry:
    job: Job
    task: Task
    entity: tuple[str, str]
