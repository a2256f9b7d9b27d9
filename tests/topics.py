"""Topics for the tests, created so that every broker knows them before the test goes on.

A CreateTopics request is answered once the KRaft controller has committed the new topics; each broker
learns of them only when it replays that part of the metadata log, a little later (much later on a
loaded machine, or right after the broker was restarted). Until then it answers UNKNOWN_TOPIC_OR_PART
about them, and a test that asks it first fails for no fault of the code under test.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewTopic  # type: ignore[attr-defined]  # re-exported


def create_topics(admin: Any, topics: Sequence[NewTopic], timeout: float = 30.0) -> None:
    """Create the topics and wait until each broker in the cluster's metadata knows all of them."""
    for future in admin.create_topics(list(topics)).values():
        future.result(timeout=timeout)
    wait_known_everywhere(admin, [t.topic for t in topics], timeout)


def unknown_to(admin: Any, broker_id: int, names: Sequence[str], timeout: float = 10.0) -> list[str]:
    """The topics of `names` that one broker does not know yet.

    A DescribeConfigs request that names a broker resource goes to that broker (librdkafka sends other
    requests of this kind to any broker), and the broker answers for each topic from its own metadata.
    """
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    futures = admin.describe_configs([*resources, ConfigResource(ConfigResource.Type.BROKER, str(broker_id))],
                                     request_timeout=timeout)
    unknown = []
    for resource, future in futures.items():
        if resource.restype != ConfigResource.Type.TOPIC:
            # A broker describes only itself: this answer shows that the request went where it should.
            future.result(timeout=timeout)
            continue
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            unknown.append(resource.name)
    return unknown


def wait_known_everywhere(admin: Any, names: Sequence[str], timeout: float = 30.0) -> None:
    """Until each broker in the cluster's metadata knows all of `names`. A broker that does not answer
    (just restarted, say) is asked again until the deadline, like one that does not know them yet."""
    deadline = time.monotonic() + timeout
    brokers = sorted(admin.list_topics(timeout=timeout).brokers)
    pending: dict[int, list[str]] = {broker: list(names) for broker in brokers}
    errors: dict[int, str] = {}
    while True:
        for broker in list(pending):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"brokers still do not know their new topics after {timeout:.0f}s: {pending}"
                                     + (f"; last errors: {errors}" if errors else ""))
            try:
                pending[broker] = unknown_to(admin, broker, pending[broker], timeout=min(10.0, left))
            except (KafkaException, TimeoutError) as exc:
                errors[broker] = repr(exc)
                continue
            if not pending[broker]:
                del pending[broker]
        if not pending:
            return
        time.sleep(0.1)
