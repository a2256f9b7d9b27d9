"""The dead-letter topic: records that cannot become feature rows, with the reason, never dropped."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.core.errors import DeadLetterUnavailable
from consumer.core.records import Rejected

HEADER_PREFIX = "x-dead-letter-"


Headers = list[tuple[str, str | bytes | None]]
Acknowledged = Callable[[Rejected, "DeadLetterUnavailable | None"], None]


def dead_letter_headers(rejected: Rejected, group_id: str) -> Headers:
    """The original message's headers, then where it came from and why it was refused."""
    message = rejected.error.source
    ours = {
        "original-topic": message.topic if message else "",
        "original-partition": str(message.partition) if message else "",
        "original-offset": str(message.offset) if message else "",
        "error-class": rejected.error.error_class,
        "reason": rejected.error.reason,
        "consumer-group": group_id,
    }
    original = rejected.message.headers() if hasattr(rejected.message, "headers") else None
    headers: Headers = list(original or [])
    headers.extend((HEADER_PREFIX + k, v.encode("utf-8")) for k, v in ours.items())
    return headers


class DeadLetterProducer:
    def __init__(self, config: Mapping[str, Any], topic: str, group_id: str, timeout_s: float = 15.0) -> None:
        conf = dict(config)
        # Fail fast when the topic cannot be written: the records are sent again later, and not committed.
        conf.setdefault("message.timeout.ms", int(timeout_s * 1000))
        self._producer = Producer(conf)
        self.topic = topic
        self._group_id = group_id
        self._timeout_s = timeout_s

    def send(self, rejected: Sequence[Rejected], acknowledged: Acknowledged) -> None:
        """Produce every rejected record; `acknowledged(record, error)` is called inside a later `poll()`
        once Kafka acknowledged it (error None) or gave up on it (after the producer's timeout). A record
        that cannot even be queued is answered at once, with the error: its offset must not be committed.
        """
        for item in rejected:
            original = item.message
            key = original.key() if hasattr(original, "key") else None

            def delivered(error: KafkaError | None, _message: Message, item: Rejected = item) -> None:
                acknowledged(item, None if error is None else DeadLetterUnavailable(
                    f"dead-letter topic {self.topic!r} cannot be written: {error}"))

            try:
                self._producer.produce(self.topic, key=key, value=original.value(),
                                       headers=dead_letter_headers(item, self._group_id), on_delivery=delivered)
            except (KafkaException, BufferError) as exc:
                acknowledged(item, DeadLetterUnavailable(f"dead-letter topic {self.topic!r} cannot be written: "
                                                         f"{exc}"))
        self._producer.poll(0)

    def poll(self) -> None:
        """Serve the acknowledgements that have arrived."""
        self._producer.poll(0)


    def close(self, timeout_s: float = 2.0) -> None:
        # Whatever is still queued here belongs to records not committed: they are read, and dead-lettered,
        # again after a restart, so shutdown does not wait long for it.
        self._producer.flush(timeout_s)
