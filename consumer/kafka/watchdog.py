"""Noticing a consumer handle that has stopped talking to its group while the cluster is there.

librdkafka recovers from broker restarts by itself, except in rare races: after a single broker's restart
a handle was seen (about once in fifteen runs of the fault suite) asking "no broker available for
coordinator query" for minutes while the broker was back and every other client reached it. Such a member
is gone from the group and reads nothing; its liveness is fine, so nothing would restart it.

The handle's statistics say how its group membership stands (`cgrp.state`: "up" once the coordinator is
known and connected). When it has not been "up" for `rejoin_after_s`, a new client asks the cluster to
describe the group, which needs the group's coordinator found and answering. If it does not answer, Kafka
(or the group's coordinator) is down for everyone, and the handle is left to reconnect by itself. If it
answers, the handle is given `confirm_s` more to come back (after an outage of the whole cluster, a client
may still be waiting out its reconnection backoff when the new one gets through), and the question is
asked again: only a second answer with the group still not up has the handle replaced. The confirmation
also covers a loop that did not poll for a while, so that no statistics were handed over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

# How often librdkafka hands the handle's statistics over (inside poll). They are a few kilobytes of JSON
# for a handful of partitions: parsed every 5 s, they cost nothing that shows.
STATISTICS_INTERVAL_MS = 5000


def group_state(statistics: str) -> str | None:
    """The consumer group's state in one statistics report of librdkafka (None when it has no group)."""
    try:
        report = json.loads(statistics)
    except ValueError:
        return None
    group = report.get("cgrp") if isinstance(report, dict) else None
    state = group.get("state") if isinstance(group, dict) else None
    return state if isinstance(state, str) else None


@dataclass
class GroupWatch:
    """When the group was last seen up, and when the cluster answered while it was not; pure, `now` passed in."""

    rejoin_after_s: float
    last_up: float
    confirm_s: float = 20.0
    answered_at: float | None = None

    def observed(self, now: float, state: str | None) -> None:
        if state == "up":
            self.last_up = now
            self.answered_at = None

    def due(self, now: float) -> bool:
        """Whether to ask the cluster now."""
        if now - self.last_up < self.rejoin_after_s:
            return False
        return self.answered_at is None or now - self.answered_at >= self.confirm_s

    def answered(self, now: float, answers: bool) -> bool:
        """Take the cluster's answer; True when the handle is to be replaced (the cluster answered twice,
        `confirm_s` apart, and the group was not seen up in between). Either way a new period begins."""
        if not answers:
            self.last_up, self.answered_at = now, None
            return False
        if self.answered_at is None:
            self.answered_at = now
            return False
        self.last_up, self.answered_at = now, None
        return True


# A broker's answers that mean the group's coordinator is moving or loading, not there for anyone yet: the
# watchdog takes them as no answer, the offset reader (offsets.py) asks again.
COORDINATOR_AWAY = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                              KafkaError.COORDINATOR_NOT_AVAILABLE})


def cluster_answers(config: Mapping[str, Any], group_id: str, timeout_s: float) -> bool:
    """Whether a new client, with no state from before, reaches the group's coordinator within `timeout_s`:
    it describes the group, or the coordinator answers with an error of its own (the group not found, say,
    or describing it not authorized)."""
    admin = AdminClient(dict(config))
    try:
        admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id].result(timeout=timeout_s + 1)
    except TimeoutError:
        log.info("the Kafka cluster does not answer either (no answer in %.0f s)", timeout_s)
        return False
    except KafkaException as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        # librdkafka's own errors (negative codes: timed out, transport, all brokers down) mean no answer.
        if error is None or error.code() < 0 or error.code() in COORDINATOR_AWAY:
            log.info("the Kafka cluster does not answer either (%s)", exc)
            return False
        log.info("the group's coordinator answers (with %s)", error.name())
    return True
