"""Outcomes handed between threads as values, through a queue: the writer's answers, and the loop's."""

from __future__ import annotations

import queue
from typing import Any


def drain(outcomes: queue.SimpleQueue[Any], first: Any = None) -> list[Any]:
    """`first` (when not None) and every outcome already queued, in order, without waiting."""
    items = [] if first is None else [first]
    while True:
        try:
            items.append(outcomes.get_nowait())
        except queue.Empty:
            return items
