"""Binding a prepared per-feature batch whose parameters repeat: each distinct value serialized once.

A guarded round of a view with three features binds fifteen parameters: per feature its value, the event
time twice, the creation time and the entity key. The driver's `PreparedStatement.bind` serializes each
one by itself, and its timestamp serializer reaches an integer only after two caught AttributeErrors
(it tries the datetime and date forms first): 17.6 us of the client's CPU per request on the development
machine, of the 0.14 ms the daemon's process spent per guarded write in a backlog, against 5.4 us here.
The rarer rounds (one statement per feature, after a guard learnt something) keep the driver's `bind`.

The bytes are the driver's own (each column type's `serialize`), into a `BoundStatement` made as the
driver documents ("may be created directly"), with `values` holding the serialized parameters as `bind`
leaves them. Where a statement's columns are not what the layout says, or a column encryption policy is
set (its columns must go through the driver), or the parameters are not what the layout foresees (a NULL
other than the creation time, a count of values other than the features'), `bind` is the driver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

# The parameters of one feature's statement in a batch, by the column each one is bound to.
INSERT_LAYOUT = ("entity_key", "value", "event_ts", "created_ts")
UPDATE_OLDER_LAYOUT = ("value", "event_ts", "created_ts", "entity_key", "event_ts")
_SLOTS = {"value": 0, "event_ts": 1, "created_ts": 2, "entity_key": 3}


class RoundBinder:
    def __init__(self, prepared: Any, layout: Sequence[str], features: int) -> None:
        self.prepared = prepared
        self._features = features
        # (value, event, created, key) -> one feature's parameters in the statement's order
        self._pick = itemgetter(*(_SLOTS[name] for name in layout))
        columns = list(getattr(prepared, "column_metadata", None) or ())
        self.fast = (getattr(prepared, "column_encryption_policy", None) is None
                     and [c.name for c in columns] == list(layout) * features)
        if self.fast:
            from cassandra.query import BoundStatement

            self._bound = BoundStatement
            types = {c.name: c.type for c in columns}
            self._protocol = prepared.protocol_version
            self._key = types["entity_key"].serialize
            self._time = types["event_ts"].serialize
            self._created = types["created_ts"].serialize
            self._value = types["value"].serialize

    def bind(self, key: str, event_ms: int, created_ms: int | None, values: Sequence[bytes]) -> Any:
        """The statement bound to `values` (one per feature, in the batch's order) and the shared rest."""
        pick = self._pick
        raw: list[Any] = []
        for value in values:
            raw += pick((value, event_ms, created_ms, key))
        # The driver's own checks and messages for what the layout does not foresee: a missing key, value or
        # event time (NULL), or a count of values other than the features'.
        if (not self.fast or len(values) != self._features or key is None or event_ms is None
                or None in values):
            return self.prepared.bind(raw)
        protocol = self._protocol
        key_bytes, event = self._key(key, protocol), self._time(event_ms, protocol)
        created = None if created_ms is None else self._created(created_ms, protocol)
        out: list[Any] = []
        for value in values:
            out += pick((self._value(value, protocol), event, created, key_bytes))
        bound = self._bound(self.prepared)
        bound.raw_values = raw
        bound.values = out
        return bound
