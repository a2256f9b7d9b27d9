"""What is failing now, and when to try again: pure state, with the clock passed in.

A dependency that fails (Cassandra, the dead-letter topic, the schema registry) pauses every partition
until it works again. The loop's own retries (dead letters, a batch waiting for its schema) back off by
one step per failed attempt; the writer retries its writes itself and only reports failing and working.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.core.errors import TransientError
from consumer.core.policy import Backoff


@dataclass
class Troubles:
    backoff: Backoff
    failing: dict[str, TransientError] = field(default_factory=dict)
    failures: int = 0  # failed attempts in a row
    retry_at: float = 0.0
    _attempt_failed: bool = False  # the attempt since the last retry has failed already

    def fail(self, what: str, error: TransientError, now: float) -> int | None:
        """Record a failure; the backoff in ms when it makes a new failed attempt, else None."""
        new = what not in self.failing
        self.failing[what] = error
        if not new and self._attempt_failed:
            return None
        self._attempt_failed = True
        self.failures += 1
        delay_ms = self.backoff.delay_ms(self.failures)
        self.retry_at = now + delay_ms / 1000
        return delay_ms

    def recover(self, what: str) -> bool:
        """`what` works again; True when that leaves nothing failing."""
        if self.failing.pop(what, None) is None or self.failing:
            return False
        self.failures = 0
        return True

    def retry_due(self, now: float) -> bool:
        """Time for the loop's own retries: True once per backoff step while something fails."""
        if not self.failing or now < self.retry_at:
            return False
        self.retry_at = now + self.backoff.delay_ms(max(1, self.failures)) / 1000
        self._attempt_failed = False
        return True

    def __contains__(self, what: str) -> bool:
        return what in self.failing

    def __bool__(self) -> bool:
        return bool(self.failing)
