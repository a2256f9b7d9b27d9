"""The prepared conditional statements of one view's table, and a round bound to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.cassandra.binding import INSERT_LAYOUT, UPDATE_OLDER_LAYOUT, RoundBinder
from consumer.cassandra.schema import table_name
from consumer.core.guard import NULL_MS, Op, Step
from consumer.core.views import FeatureView, check_identifier

_SET = "SET value = ?, event_ts = ?, created_ts = ? WHERE entity_key = ? AND feature_name = ?"


def _batch_of(statement: str, view: FeatureView) -> str:
    """An unlogged batch of `statement` for each feature of the view (feature names are validated identifiers)."""
    body = " ".join(statement.replace("{feature}", check_identifier(f.name, "feature name")) + ";"
                    for f in view.features)
    return f"BEGIN UNLOGGED BATCH {body} APPLY BATCH"


@dataclass
class Statements:
    insert: Any
    update_older: Any
    update_null_event: Any
    update_tie: Any
    update_exact: Any
    select: Any
    # The common rounds, one prepared conditional batch for all of the view's features: one statement to
    # bind instead of one per feature (the client's CPU is shared with Cassandra's).
    features: tuple[str, ...]
    insert_all: RoundBinder
    update_older_all: RoundBinder

    @classmethod
    def prepare(cls, session: Any, keyspace: str, view: FeatureView) -> Statements:
        """Prepare them all; the driver's errors go through unchanged (the writer classifies them)."""
        table = table_name(keyspace, view)
        insert = f"INSERT INTO {table} (entity_key, feature_name, value, event_ts, created_ts)"
        return cls(
            insert=session.prepare(f"{insert} VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"),
            update_older=session.prepare(f"UPDATE {table} {_SET} IF event_ts < ?"),
            update_null_event=session.prepare(f"UPDATE {table} {_SET} IF event_ts = null"),
            update_tie=session.prepare(f"UPDATE {table} {_SET} IF event_ts = ? AND created_ts <= ?"),
            update_exact=session.prepare(f"UPDATE {table} {_SET} IF event_ts = ? AND created_ts = ?"),
            select=session.prepare(
                f"SELECT feature_name, value, event_ts, created_ts FROM {table} WHERE entity_key = ?"),
            features=tuple(f.name for f in view.features),
            insert_all=RoundBinder(session.prepare(_batch_of(
                f"{insert} VALUES (?, '{{feature}}', ?, ?, ?) IF NOT EXISTS", view)), INSERT_LAYOUT,
                len(view.features)),
            update_older_all=RoundBinder(session.prepare(_batch_of(
                f"UPDATE {table} SET value = ?, event_ts = ?, created_ts = ? "
                "WHERE entity_key = ? AND feature_name = '{feature}' IF event_ts < ?", view)),
                UPDATE_OLDER_LAYOUT, len(view.features)),
        )

    def request(self, key: str, ours: tuple[int, int], values: dict[str, bytes], steps: dict[str, Step]) -> Any:
        """One round of an entity's write: a single conditional statement, or an unlogged batch of them."""
        whole = self._bind_all(key, ours, values, steps)
        if whole is not None:
            return whole
        bound = [self._bind(key, ours, values[feature], feature, step) for feature, step in steps.items()]
        if len(bound) == 1:
            return bound[0]
        from cassandra.query import BatchStatement, BatchType

        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for statement in bound:
            batch.add(statement)
        return batch

    def _bind_all(self, key: str, ours: tuple[int, int], values: dict[str, bytes], steps: dict[str, Step]) -> Any:
        """The round as one prepared batch, when every feature gets the same INSERT or UPDATE-if-older."""
        if tuple(steps) != self.features:
            return None
        op = steps[self.features[0]].op
        if any(step.op is not op for step in steps.values()):
            return None
        if op is not Op.INSERT and op is not Op.UPDATE_OLDER:
            return None
        event_ms, created_ms = ours
        binder = self.insert_all if op is Op.INSERT else self.update_older_all
        return binder.bind(key, event_ms, None if created_ms == NULL_MS else created_ms,
                           [values[feature] for feature in self.features])

    def _bind(self, key: str, ours: tuple[int, int], value: bytes, feature: str, step: Step) -> Any:
        event_ms, created_ms = ours
        created = None if created_ms == NULL_MS else created_ms
        if step.op is Op.INSERT:
            return self.insert.bind((key, feature, value, event_ms, created))
        head = (value, event_ms, created, key, feature)
        if step.op is Op.UPDATE_OLDER:
            return self.update_older.bind((*head, step.cond_event_ms))
        if step.op is Op.UPDATE_NULL_EVENT:
            return self.update_null_event.bind(head)
        if step.op is Op.UPDATE_TIE:
            return self.update_tie.bind((*head, step.cond_event_ms, step.cond_created_ms))
        return self.update_exact.bind((*head, step.cond_event_ms, step.cond_created_ms))
