"""The verdict every fault test ends with, shared by the single-node fault suite (tests/faults) and the
cluster tier (tests/cluster).

The online state in Cassandra is compared with the workload's oracle (nothing lost, nothing regressed,
no wrong bytes), the dead-letter topic with the poison records (complete: every poison record, identified
by its original partition and offset and carrying its bytes), and the group's lag must be back to 0.
`judge` computes the figures without asserting, so that a test can report them before it asserts on them;
the caller checks the lag first (nothing is judged before the group has caught up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.daemon import Deployment
from tests.helpers import driver_view
from tests.workload import Comparison, Event, compare, expected_state


@dataclass
class Figures:
    test: str
    events: int
    faults: int
    entities: int
    lost: int
    regressed: int
    wrong: int
    poison: int
    dead_letters: int
    dead_letters_complete: bool


@dataclass
class Judgement:
    figures: Figures
    comparison: Comparison
    complete: bool
    seen: list[tuple[int, int]]  # distinct original (partition, offset) found on the dead-letter topic
    expected: list[tuple[int, int]]  # those of the poison records
    letters: int  # dead-letter messages read, duplicates included (at-least-once)

    def check(self) -> Figures:
        assert self.comparison.ok, self.comparison
        assert self.complete, (self.seen, self.expected)
        return self.figures


def judge(name: str, deployment: Deployment, reader: Any, events: list[Event],
          where: dict[int, tuple[int, int]], faults: int) -> Judgement:
    """The figures of a finished test (whose group has caught up): the rows against the oracle, the dead letters."""
    result = compare(reader.read, driver_view(), expected_state(events))
    poison = [e for e in events if e.poison]
    letters = deployment.dead_letters(expected=len(poison))
    seen: dict[tuple[int, int], Any] = {}
    for message in letters:
        headers = {k: v.decode() for k, v in message.headers()}
        seen[(int(headers["x-dead-letter-original-partition"]), int(headers["x-dead-letter-original-offset"]))] = \
            message
    expected = {where[e.index]: e for e in poison}
    complete = set(seen) == set(expected) and all(
        (seen[pos].value() or b"") == e.value() and seen[pos].key() == e.key for pos, e in expected.items())
    figures = Figures(name, len(events), faults, result.checked, len(result.missing), len(result.regressed),
                      len(result.wrong), len(poison), len(seen), complete)
    return Judgement(figures, result, complete, sorted(seen), sorted(expected), len(letters))
