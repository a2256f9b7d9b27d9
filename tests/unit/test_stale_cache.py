"""The stale cache: bounds never go down, and the entity written longest ago is the one forgotten."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.cassandra.stale_cache import StaleCache

VERSIONS = st.tuples(st.integers(0, 5), st.integers(-1, 5))
ENTITIES = st.sampled_from([("t", k) for k in "abcdef"])


def test_forgets_the_entity_written_longest_ago_not_the_one_read_longest_ago() -> None:
    cache = StaleCache(2)
    cache.raise_to(("t", "a"), (1, 1))
    cache.raise_to(("t", "b"), (1, 1))
    assert cache.get(("t", "a")) == (1, 1)  # a read does not keep "a"
    cache.raise_to(("t", "b"), (2, 2))  # nor does another write of "b" make "a" newer
    cache.raise_to(("t", "c"), (1, 1))
    assert cache.get(("t", "a")) is None
    assert cache.get(("t", "b")) == (2, 2)
    assert cache.get(("t", "c")) == (1, 1)


def test_a_lower_bound_never_replaces_a_higher_one_but_counts_as_a_write() -> None:
    cache = StaleCache(2)
    cache.raise_to(("t", "a"), (5, 1))
    cache.raise_to(("t", "b"), (1, 1))
    cache.raise_to(("t", "a"), (3, 9))
    cache.raise_to(("t", "c"), (1, 1))
    assert cache.get(("t", "a")) == (5, 1)
    assert cache.get(("t", "b")) is None


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        StaleCache(0)


@given(st.integers(1, 4), st.lists(st.tuples(ENTITIES, VERSIONS), max_size=60))
def test_agrees_with_a_model_of_the_most_recently_written(capacity: int, writes: list) -> None:
    cache = StaleCache(capacity)
    order: list[tuple[str, str]] = []  # least recently written first
    bounds: dict[tuple[str, str], tuple[int, int]] = {}
    for entity, bound in writes:
        cache.raise_to(entity, bound)
        if entity in order:
            order.remove(entity)
        order.append(entity)
        bounds[entity] = max(bounds.get(entity, bound), bound)
        for forgotten in order[:-capacity]:
            bounds.pop(forgotten, None)
        del order[:-capacity]
        assert len(cache) == len(order) <= capacity
    for entity in {e for e, _ in writes}:
        assert cache.get(entity) == bounds.get(entity)
