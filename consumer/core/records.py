"""A consumed record as the loop sees it, and a record refused with the reason (for the dead-letter topic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from consumer.core.errors import RecordError, Source


class Message(Protocol):
    """The part of confluent_kafka.Message that the loop reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass
class Rejected:
    message: Message
    error: RecordError


def source_of(message: Message) -> Source:
    return Source(message.topic() or "", message.partition() or 0, message.offset() or 0)
