"""The daemon freezes its start-up heap before the loop, so that full collections stay short."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumer.app import settle_heap


class _Node:
    me: object


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_objects_alive_at_start_up_are_no_longer_tracked_but_later_ones_are(unfrozen: None) -> None:
    before = [[i] for i in range(1000)]  # lists: objects the collector tracks
    settle_heap()
    after = [[i] for i in range(1000)]
    tracked = {id(o) for o in gc.get_objects()}
    assert gc.get_freeze_count() >= len(before)
    assert not any(id(o) in tracked for o in before)
    assert all(id(o) in tracked for o in after)


def test_garbage_made_after_start_up_is_still_collected(unfrozen: None) -> None:
    settle_heap()
    node = _Node()
    node.me = node  # a cycle: only the cyclic collector frees it
    ref = weakref.ref(node)
    del node
    gc.collect()
    assert ref() is None
