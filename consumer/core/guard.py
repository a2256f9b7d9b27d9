"""The timestamp guard's decisions, as pure functions.

A feature value is a version `(event_ms, created_ms)`; `created_ms` is NULL_MS when the record had
none, which orders below every real time. A write applies when its version is at least the stored one:

* a newer event wins;
* on the same event time (at Cassandra's millisecond resolution), the newer created time wins;
* on a full tie the write applies too: a later record with identical timestamps replaces the earlier one,
  as the later message does within a batch, and re-sending a write (after a timeout whose outcome is
  unknown) rewrites the same value.

Cassandra's lightweight transactions have no OR, and an UPDATE never creates a missing row, so each
feature is written with the conditional statement that fits what is known of its stored row, and
whatever a not-applied answer reveals is learnt for the next round:

| known of the stored row        | statement                                                    |
|--------------------------------|--------------------------------------------------------------|
| nothing                        | `UPDATE ... IF event_ts < E` or `INSERT ... IF NOT EXISTS` (a guess) |
| missing                        | `INSERT ... IF NOT EXISTS`                                     |
| event_ts null (not our write)  | `UPDATE ... IF event_ts = null`                                |
| event_ts < E                   | `UPDATE ... IF event_ts < E`                                   |
| event_ts > E                   | none: stale                                                  |
| event_ts = E, created unknown  | `UPDATE ... IF event_ts = E AND created_ts <= C` (`= null` when C is null) |
| event_ts = E, created_ts = Cs  | `UPDATE ... IF event_ts = E AND created_ts = Cs` when (E, C) >= (E, Cs), else stale |

Every round either applies (a conditional batch is all-or-nothing) or learns the stored state of the
rows it touched, so without concurrent writers an entity needs at most four rounds; the writer bounds
the rounds anyway.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A missing created time: below every real time (the int64 minimum, as numpy and Cassandra hold it).
NULL_MS = -(2**63)

Version = tuple[int, int]  # (event_ms, created_ms); created_ms is NULL_MS when missing


class Op(enum.Enum):
    INSERT = "insert if not exists"
    UPDATE_OLDER = "update if event_ts <"
    UPDATE_NULL_EVENT = "update if event_ts = null"
    UPDATE_TIE = "update if event_ts = and created_ts <="
    UPDATE_EXACT = "update if event_ts = and created_ts ="


@dataclass(frozen=True)
class Known:
    """What a not-applied answer (or a cache) told about one stored row."""

    exists: bool
    event_ms: int = 0
    created_ms: int | None = None  # None: not known; NULL_MS: known to be null

    @property
    def version(self) -> Version | None:
        if not self.exists or self.created_ms is None:
            return None
        return (self.event_ms, self.created_ms)


MISSING = Known(False)


@dataclass(frozen=True)
class Step:
    """One conditional statement for one feature row."""

    op: Op
    # The condition's operands: event_ts for UPDATE_*, created_ts for UPDATE_TIE / UPDATE_EXACT
    # (None in UPDATE_EXACT means `created_ts = null`).
    cond_event_ms: int | None = None
    cond_created_ms: int | None = None


def decide(ours: Version, known: Known | None, guess_exists: bool) -> Step | None:
    """The statement for one feature, or None when the write is stale and must not be sent."""
    event_ms, created_ms = ours
    if known is None:
        return Step(Op.UPDATE_OLDER, event_ms) if guess_exists else Step(Op.INSERT)
    if not known.exists:
        return Step(Op.INSERT)
    if known.event_ms == NULL_MS:
        # Written by something else without an event time: every version beats it, but `null < E` is
        # false in a condition, so it needs a condition of its own.
        return Step(Op.UPDATE_NULL_EVENT)
    if known.event_ms < event_ms:
        return Step(Op.UPDATE_OLDER, event_ms)
    if known.event_ms > event_ms:
        return None
    if known.created_ms is None:
        if created_ms == NULL_MS:
            return Step(Op.UPDATE_EXACT, event_ms, None)
        return Step(Op.UPDATE_TIE, event_ms, created_ms)
    if known.created_ms > created_ms:
        return None
    return Step(Op.UPDATE_EXACT, event_ms, None if known.created_ms == NULL_MS else known.created_ms)


def learn(features: Iterable[str], answer_rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Known]:
    """What a not-applied conditional batch revealed about the rows of `features`.

    `answer_rows` maps a feature name to the row Cassandra returned for it, with `event_ts` and, when it
    was part of a condition (or the batch had an INSERT), `created_ts`, both in milliseconds (None for
    null). A feature without a returned row has no stored row.
    """
    out: dict[str, Known] = {}
    for feature in features:
        row = answer_rows.get(feature)
        if row is None:
            out[feature] = MISSING
            continue
        event = row.get("event_ts")
        if "created_ts" in row:
            created = row["created_ts"]
            created_ms: int | None = NULL_MS if created is None else int(created)
        else:
            created_ms = None
        # A stored row without event_ts was not written by a guarded write: any version beats it.
        out[feature] = Known(True, NULL_MS if event is None else int(event), created_ms)
    return out


def certainly_stale(ours: Version, lower_bound: Version | None) -> bool:
    """True when every feature of the entity is known to store a newer version than ours.

    `lower_bound` is a version that every feature row of the entity stored at some point; stored versions
    only grow under guarded writes, so the rows still hold at least that much.
    """
    return lower_bound is not None and ours < lower_bound


def lower_bound_after(ours: Version, written: bool, stale_versions: Iterable[Version]) -> Version:
    """A version every feature row holds after a write: ours where written, theirs where ours was stale."""
    versions = list(stale_versions)
    if written:
        versions.append(ours)
    return min(versions)


@dataclass
class FirstGuess:
    """Whether an entity the process knows nothing about probably has rows already.

    A pure exponentially weighted estimate of how often unknown entities turned out to exist: during an
    initial load most are new (try INSERT first), in steady state most exist (try UPDATE first).
    """

    exists_rate: float = 0.5
    weight: float = 0.05

    def guess(self) -> bool:
        return self.exists_rate >= 0.5

    def observe(self, existed: bool) -> FirstGuess:
        rate = (1 - self.weight) * self.exists_rate + self.weight * (1.0 if existed else 0.0)
        return FirstGuess(rate, self.weight)
