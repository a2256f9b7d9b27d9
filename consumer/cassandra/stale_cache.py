"""The stale cache: for the entities written most recently, a version every feature row of each holds.

Stored versions only grow under guarded writes, so a write older than the entity's bound is stale without
asking Cassandra (consumer/core/guard.py, `certainly_stale`). The entity written longest ago is forgotten
first. Reads do not change the order: an entity is read just before its own write, which moves it then.

An OrderedDict does the ordering in C. cachetools' LRUCache, used before, is pure Python: its lookups and
updates cost about 8 µs per guarded write on the development machine, a fifth of the writer's own work.
"""

from __future__ import annotations

from collections import OrderedDict

from consumer.core.guard import Version

Entity = tuple[str, str]  # (table, entity key)


class StaleCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._bounds: OrderedDict[Entity, Version] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bounds)

    def get(self, entity: Entity) -> Version | None:
        return self._bounds.get(entity)

    def raise_to(self, entity: Entity, bound: Version) -> None:
        """The entity's rows all hold at least `bound` now (a bound never goes down)."""
        bounds = self._bounds
        current = bounds.get(entity)
        if current is None:
            bounds[entity] = bound
            if len(bounds) > self.capacity:
                bounds.popitem(last=False)
            return
        if bound > current:
            bounds[entity] = bound
        bounds.move_to_end(entity)
