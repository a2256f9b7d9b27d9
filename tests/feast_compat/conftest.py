"""Fixtures that run Feast 0.67 itself, in its own virtualenv (see stack/feastenv.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import feastenv

ORACLE = Path(__file__).with_name("feast_oracle.py")


@pytest.fixture(scope="session")
def feast_oracle() -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """Ask Feast what it writes for a view and its rows (one long-lived process per session)."""
    python = feastenv.ensure()
    proc = subprocess.Popen(
        [str(python), str(ORACLE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, "the Feast oracle exited"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, f"Feast refused the rows: {answer['error']}"
        return answer

    yield ask
    proc.stdin.close()
    proc.wait(timeout=30)
