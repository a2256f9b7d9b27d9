"""bench.e2e's probe times ours from its first batch to the commit that reaches the log end, not to the
commits the daemon's shutdown sends afterwards."""

from __future__ import annotations

import pytest

from bench.e2e import Probe


def test_the_run_ends_at_the_commit_that_reaches_the_log_end() -> None:
    clock = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    probe = Probe({("t", 0): 10, ("t", 1): 20}, clock=lambda: next(clock))
    stops: list[float] = []
    probe.stop = lambda: stops.append(probe.last or 0.0)

    probe.committed({("t", 0): 10}, 0.0)  # at 1.0: one partition at its end
    assert not probe.complete and probe.last == 1.0 and stops == []
    probe.committed({("t", 1): 20}, 0.0)  # at 2.0: both are
    assert probe.complete and probe.last == 2.0 and stops == [2.0]
    probe.committed({("t", 0): 10, ("t", 1): 20}, 0.0)  # the shutdown's commit, later
    assert probe.last == 2.0 and stops == [2.0]


def test_without_ends_a_run_goes_on() -> None:
    probe = Probe({})
    probe.stop = lambda: pytest.fail("stopped without ends")
    probe.committed({("t", 0): 10}, 0.0)
    assert not probe.complete and probe.done == {("t", 0): 10}


def test_ends_set_during_the_run_end_it_at_the_next_commit_that_reaches_them() -> None:
    # The freshness phase learns the log ends only once its producer is done.
    clock = iter([1.0, 2.0, 3.0])
    probe = Probe({}, clock=lambda: next(clock))
    stops: list[float] = []
    probe.stop = lambda: stops.append(probe.last or 0.0)
    probe.committed({("t", 0): 5}, 0.0)
    probe.set_ends({("t", 0): 8})
    probe.committed({("t", 0): 8}, 0.0)
    probe.committed({("t", 0): 8}, 0.0)
    assert probe.complete and probe.last == 2.0 and stops == [2.0]


def test_ends_already_reached_when_set_stop_the_run_at_once() -> None:
    probe = Probe({}, clock=lambda: 1.0)
    stops: list[bool] = []
    probe.stop = lambda: stops.append(True)
    probe.committed({("t", 0): 8}, 0.0)
    probe.set_ends({("t", 0): 8})
    assert probe.complete and stops == [True] and probe.last == 1.0
