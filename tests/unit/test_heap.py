"""The daemon freezes its start-up heap before the loop, so that full collections stay short, and collects
its young objects less often."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any, cast

import pytest

from consumer.app import YOUNG_GC_THRESHOLD, Daemon, settle_heap


class _Node:
    me: object


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


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


def test_the_young_generation_is_collected_less_often_and_the_older_ones_as_before(unfrozen: None) -> None:
    gc.set_threshold(700, 10, 10)
    settle_heap()
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
    settle_heap()  # again (the benchmark's anchors do): nothing changes
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)


def test_cycles_are_still_collected_without_being_asked_once_enough_objects_are_made(unfrozen: None) -> None:
    was_enabled = gc.isenabled()
    gc.enable()  # the test session runs with automatic collection off (tests/conftest.py); the daemon does not
    try:
        settle_heap()
        node = _Node()
        node.me = node
        ref = weakref.ref(node)
        del node
        kept = [[i] for i in range(YOUNG_GC_THRESHOLD // 2)]  # alive: they count towards the next collection
        assert ref() is not None  # not yet: the young generation is not collected every 700 objects
        kept += [[i] for i in range(YOUNG_GC_THRESHOLD)]
        assert ref() is None
    finally:
        if not was_enabled:
            gc.disable()


def test_garbage_left_by_start_up_is_collected_not_frozen(unfrozen: None) -> None:
    node = _Node()
    node.me = node
    ref = weakref.ref(node)
    del node
    settle_heap()
    assert ref() is None


def test_the_daemon_freezes_its_heap_before_the_loop_runs(unfrozen: None) -> None:
    frozen_when_run: list[int] = []

    class Loop:
        def run(self) -> None:
            frozen_when_run.append(gc.get_freeze_count())

    daemon = Daemon(pipeline=cast(Any, Loop()), store=cast(Any, None), dead_letters=cast(Any, None),
                    metrics=cast(Any, None), server=None)
    assert gc.get_freeze_count() == 0
    daemon.run()
    assert frozen_when_run and frozen_when_run[0] > 0
