"""The online store as the pipeline sees it: guarded writes with outcomes as values.

`consumer.cassandra.writer.CassandraStore` is the real one; `tests/fakes.py` holds an in-memory model that
states the guard's rule directly, and `tests/contract/` runs the same checks against both.

Writes are submitted and answered later, through a callback that gets the write's report: the loop goes
on reading and decoding while they are in flight. `write` is the same, waited for.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from consumer.core.views import FeatureView

if TYPE_CHECKING:
    from consumer.core.errors import TransientError


@dataclass
class EncodedRows:
    """Rows ready for the writer: one per entity, aligned by position."""

    entity_keys: list[str]
    event_ms: npt.NDArray[np.int64]
    created_ms: npt.NDArray[np.int64]  # NULL_MS where the record had no created timestamp
    values: dict[str, list[bytes]]

    def __len__(self) -> int:
        return len(self.entity_keys)


class RowStatus(enum.Enum):
    APPLIED = "applied"  # every feature written
    PARTIAL = "partial"  # some features written, the others already newer
    STALE = "stale"  # nothing written: the stored values are newer
    FAILED = "failed"  # the store refused this entity's write (see `failures`)


@dataclass
class WriteReport:
    statuses: list[RowStatus]
    failures: dict[int, str] = field(default_factory=dict)
    requests: int = 0
    not_applied: int = 0  # conditional requests the store did not apply (stale, or a round that learnt)
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # the errors retried, by kind ("WriteTimeout/CAS")
    cache_skips: int = 0  # certainly stale rows that needed no request at all
    latencies: list[float] = field(default_factory=list)
    # Per row: when its first request was sent (monotonic seconds; None when none was needed), and when
    # its outcome was known (wall-clock seconds).
    sent_at: list[float | None] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    # Set when no row can be written (a missing table, refused credentials): the process must stop.
    error: Exception | None = None

    def count(self, status: RowStatus) -> int:
        return sum(1 for s in self.statuses if s is status)


@dataclass(frozen=True)
class StoredCell:
    value: bytes
    event_ms: int
    created_ms: int | None


Done = Callable[[WriteReport], None]
# Told when writes start failing for a reason of the world's (with the error), and when they succeed again
# (with None).
HealthListener = Callable[["TransientError | None"], None]


class Store(Protocol):
    def submit(self, view: FeatureView, rows: EncodedRows, done: Done) -> int:
        """Queue every row for a guarded write and return at once; `done` is called with the report (from
        another thread) once each row has an outcome. Returns an id for `abandon`.

        Two writes of one entity are never in flight at once: a later submission waits for the earlier.
        Transient failures are retried until they succeed (the health listener hears of them meanwhile).
        """
        ...

    def abandon(self, submissions: Iterable[int]) -> None:
        """Give up these submissions: what was not sent is dropped, and `done` is not called."""
        ...

    def watch(self, listener: HealthListener) -> None: ...

    @property
    def window(self) -> int:
        """How many requests the writer keeps in flight: with fewer rows pending, it has room."""
        ...

    def pending(self) -> int:
        """Rows submitted without an outcome yet. When there are at least `window`, the room listener is
        called (from another thread) once they fall below it."""
        ...

    def on_room(self, listener: Callable[[], None]) -> None: ...

    def write(self, view: FeatureView, rows: EncodedRows, budget_s: float | None = None) -> WriteReport:
        """Write every row through the guard and wait; raises StoreUnavailable (transient: Cassandra keeps
        failing, or `budget_s` ran out first) or StoreMisconfigured."""
        ...

    def read(self, view: FeatureView, entity_key: str) -> dict[str, StoredCell]: ...

    def create_schema(self, views: Iterable[FeatureView], create_keyspace: bool) -> list[str]: ...

    def ping(self) -> str: ...

    def close(self) -> None: ...
