"""Noticing a consumer handle that has stopped talking to its group while the cluster is there.

librdkafka recovers from broker restarts by itself, except in rare races: after a single broker's restart
a handle was seen (about once in fifteen runs of the fault suite) asking "no broker available for
coordinator query" for minutes while the broker was back and every other client reached it. Such a member
is gone from the group and reads nothing; its liveness is fine, so nothing would restart it.

The handle's statistics say how its group membership stands (`cgrp.state`: "up" once the coordinator is
known and connected). When it has not been "up" for `rejoin_after_s`, a fresh client asks the cluster for
its metadata: if the cluster answers, the handle is stuck and is replaced; if not, Kafka is down for
everyone and the handle is left to reconnect by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
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
    """When the group was last seen up; pure, with `now` passed in."""

    rejoin_after_s: float
    last_up: float

    def observed(self, now: float, state: str | None) -> None:
        if state == "up":
            self.last_up = now

    def due(self, now: float) -> bool:
        """Whether the group has been without its coordinator long enough to ask the cluster."""
        return now - self.last_up >= self.rejoin_after_s

    def reset(self, now: float) -> None:
        """Asked (the cluster did not answer, or the handle was replaced): a whole period before the next ask."""
        self.last_up = now


def cluster_answers(config: Mapping[str, Any], timeout_s: float) -> bool:
    """Whether a new client, with no state from before, gets the cluster's metadata within `timeout_s`."""
    admin = AdminClient(dict(config))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        log.info("the Kafka cluster does not answer either (%s)", exc)
        return False
    return True
