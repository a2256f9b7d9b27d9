"""The fault suite's verdict and its figures.

Every fault test ends with `verify`: Cassandra compared with the workload's oracle (nothing missing,
nothing regressed), the dead-letter topic compared with the poison records (complete: every poison
record, identified by its original partition and offset and carrying its bytes), and the group's lag
back to 0. The figures of each test are printed in a table at the end of the session
(`pytest -m fault`) and, with FAULT_REPORT=path, written there as JSON lines. The verdict itself lives in
tests/verdict.py, which the cluster tier (tests/cluster) shares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest

from consumer.cassandra.writer import CassandraStore
from tests.daemon import Deployment
from tests.verdict import Figures, judge
from tests.workload import Event

REPORT: list[Figures] = []


def verify(name: str, deployment: Deployment, reader: CassandraStore, events: list[Event],
           where: dict[int, tuple[int, int]], faults: int) -> Figures:
    """Compare the online state and the dead letters with the oracle; the lag must be back to 0."""
    assert deployment.total_lag() == 0, deployment.lag()
    judgement = judge(name, deployment, reader, events, where, faults)
    REPORT.append(judgement.figures)
    return judgement.check()


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
