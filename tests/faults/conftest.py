"""The fault suite's verdict and its figures.

Every fault test ends with `verify`: Cassandra compared with the workload's oracle (nothing missing,
nothing regressed), the dead-letter topic compared with the poison records (complete: every poison
record, identified by its original partition and offset and carrying its bytes), and the group's lag
back to 0. The figures of each test are printed in a table at the end of the session
(`pytest -m fault`) and, with FAULT_REPORT=path, written there as JSON lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from consumer.cassandra.writer import CassandraStore
from tests.daemon import Deployment
from tests.helpers import driver_view
from tests.workload import Event, compare, expected_state


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


REPORT: list[Figures] = []


def verify(name: str, deployment: Deployment, reader: CassandraStore, events: list[Event],
           where: dict[int, tuple[int, int]], faults: int) -> Figures:
    """Compare the online state and the dead letters with the oracle; the lag must be back to 0."""
    assert deployment.total_lag() == 0, deployment.lag()
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
    REPORT.append(figures)
    assert result.ok, result
    assert complete, (sorted(seen), sorted(expected))
    return figures


@pytest.fixture
def record_figures() -> Callable[..., Figures]:
    return verify


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault suite figures")
    header = ("test", "events", "faults", "entities", "lost", "regressed", "wrong", "poison", "dead letters")
    terminalreporter.write_line(" | ".join(header))
    for f in REPORT:
        terminalreporter.write_line(" | ".join(str(x) for x in (
            f.test, f.events, f.faults, f.entities, f.lost, f.regressed, f.wrong, f.poison,
            f"{f.dead_letters} ({'complete' if f.dead_letters_complete else 'INCOMPLETE'})")))
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            for f in REPORT:
                fh.write(json.dumps(asdict(f)) + "\n")
