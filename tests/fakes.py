"""In-memory stand-ins for the pipeline's ports, for pure tests of the pipeline."""

from __future__ import annotations

from collections.abc import Iterable

from consumer.errors import StoreUnavailable
from consumer.rows import NULL_MS, EncodedRows
from consumer.store import RowStatus, StoredCell, WriteReport
from consumer.views import FeatureView


def cell_version(cell: StoredCell) -> tuple[int, int]:
    return (cell.event_ms, NULL_MS if cell.created_ms is None else cell.created_ms)


class FakeStore:
    """The guard's rule stated directly: a value is written when its (event, created) version is at least
    the stored one (a missing created time is the oldest). The contract suite checks that Cassandra's
    lightweight transactions end in the same state as this model."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[str, str], StoredCell]] = {}
        self.down = False
        self.writes = 0

    def write(self, view: FeatureView, rows: EncodedRows) -> WriteReport:
        if self.down:
            raise StoreUnavailable("fake store is down")
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
        return WriteReport(statuses, requests=len(rows))

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
