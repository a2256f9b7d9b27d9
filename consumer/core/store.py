"""The online store as the pipeline sees it: guarded writes with outcomes as values.

`consumer.cassandra_sink.CassandraStore` is the real one; `tests/fakes.py` holds an in-memory model that
states the guard's rule directly, and `tests/contract/` runs the same checks against both.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from consumer.core.views import FeatureView


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
    cache_skips: int = 0  # certainly stale rows that needed no request at all
    latencies: list[float] = field(default_factory=list)

    def count(self, status: RowStatus) -> int:
        return sum(1 for s in self.statuses if s is status)


@dataclass(frozen=True)
class StoredCell:
    value: bytes
    event_ms: int
    created_ms: int | None


class Store(Protocol):
    def write(self, view: FeatureView, rows: EncodedRows, budget_s: float | None = None) -> WriteReport:
        """Write every row through the guard; raises StoreUnavailable (transient) or StoreMisconfigured.

        With `budget_s`, gives up (StoreUnavailable) when the rows are not all done within that many seconds.
        """
        ...

    def read(self, view: FeatureView, entity_key: str) -> dict[str, StoredCell]: ...

    def create_schema(self, views: Iterable[FeatureView], create_keyspace: bool) -> list[str]: ...

    def ping(self) -> str: ...

    def close(self) -> None: ...
