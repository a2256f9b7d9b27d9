"""What the loop talks to, as it sees it: the Kafka group member, the dead-letter topic, and time.

The real ones are `kafka/source.KafkaSource`, `kafka/deadletter.DeadLetterProducer` and the system's
clocks; `tests/fakes.py` holds scripted ones. (The online store's port is `core/store.Store`.)
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consumer.core.errors import DeadLetterUnavailable
from consumer.core.records import Message, Rejected
from consumer.kafka.source import TP


class Source(Protocol):
    group_id: str

    def subscribe(self) -> None: ...
    def poll(self, max_messages: int, timeout_s: float) -> Sequence[Message]: ...
    def assignment(self) -> set[TP]: ...
    def pause(self, partitions: Iterable[TP]) -> None: ...
    def resume(self, partitions: Iterable[TP]) -> None: ...
    def commit(self, offsets: Mapping[TP, int], asynchronous: bool) -> None: ...
    def close(self) -> None: ...


class DeadLetters(Protocol):
    def send(self, rejected: list[Rejected],
             acknowledged: Callable[[Rejected, DeadLetterUnavailable | None], None]) -> None: ...
    def poll(self) -> None: ...
    def close(self) -> None: ...


def _wait_on(answers: queue.SimpleQueue[Any], timeout_s: float) -> Any:
    try:
        return answers.get(timeout=timeout_s)
    except queue.Empty:
        return None


@dataclass(frozen=True)
class Clock:
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    # Waits up to the timeout for the first item of a queue (None when none came): a fake clock moves instead.
    wait_on: Callable[[queue.SimpleQueue[Any], float], Any] = _wait_on
