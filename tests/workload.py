"""A deterministic workload of driver_hourly_stats events, and the oracle of its final online state.

Events are keyed by driver, so every event of a driver lands in one partition in production order.
The workload holds out-of-order and late events, exact duplicates, ties on event time (the created time
decides), full ties (the later message wins) and poison messages that cannot be decoded.

The oracle: per driver, the event with the greatest (event_ms, created_ms, production order), a missing
created time being the oldest; poison messages are expected on the dead-letter topic, all others not.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import fastavro
import numpy as np

from consumer.core.dtypes import DTYPES, ENTITY_VALUE_TYPES
from consumer.core.guard import NULL_MS
from consumer.feast.keys import serialize_entity_key
from consumer.feast.values import decode_value
from tests.helpers import DRIVER_SCHEMA, plain_schema

PARSED = fastavro.parse_schema(json.loads(json.dumps(plain_schema(DRIVER_SCHEMA))))
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Event:
    index: int  # production order
    driver_id: int
    event_ms: int
    created_ms: int | None
    conv_rate: float
    acc_rate: float
    trips: int
    poison: bool = False

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.event_ms, NULL_MS if self.created_ms is None else self.created_ms, self.index)

    def value(self) -> bytes:
        if self.poison:
            return [b"\x01not-avro", b"", b"\x02\x80\x80"][self.index % 3]
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, PARSED, self.record())
        return buf.getvalue()

    def record(self) -> dict[str, Any]:
        return {
            "driver_id": self.driver_id,
            "event_timestamp": self.event_ms * 1000,
            "created": (self.created_ms if self.created_ms is not None else self.event_ms) * 1000,
            "conv_rate": self.conv_rate,
            "acc_rate": self.acc_rate,
            "avg_daily_trips": self.trips,
        }

    @property
    def key(self) -> bytes:
        return str(self.driver_id).encode()


def generate(entities: int, events_per_entity: int, seed: int = 1, poison_rate: float = 0.02,
             base_ms: int | None = None) -> list[Event]:
    """Events in production order. Timestamps lie in the day before `base_ms` (default: now)."""
    rng = random.Random(seed)
    base = (base_ms or int(time.time() * 1000)) - 30 * HOUR_MS
    per_driver: list[list[tuple[int, int | None]]] = []
    for _ in range(entities):
        versions: list[tuple[int, int | None]] = []
        for _ in range(events_per_entity):
            roll = rng.random()
            if versions and roll < 0.15:
                versions.append(rng.choice(versions))  # duplicate (or a full tie when values differ)
            elif versions and roll < 0.3:
                event, _ = rng.choice(versions)
                versions.append((event, event + rng.randrange(1, 5000)))  # tie on event time
            else:
                event = base + rng.randrange(0, 24) * HOUR_MS + rng.randrange(0, 1000)
                versions.append((event, event + rng.randrange(0, 60_000) if rng.random() < 0.8 else None))
        per_driver.append(versions)
    # Interleave drivers; within a driver the order is shuffled too: late events arrive after newer ones.
    slots = [(d, v) for d, versions in enumerate(per_driver) for v in versions]
    rng.shuffle(slots)
    events: list[Event] = []
    for driver, (event_ms, created_ms) in slots:
        poison = rng.random() < poison_rate
        events.append(Event(len(events), 1000 + driver, event_ms, created_ms,
                            round(rng.random(), 6), round(rng.random(), 6), rng.randrange(0, 500), poison))
    return events


def expected_state(events: list[Event]) -> dict[int, Event]:
    """The oracle: the winning event per driver (created_ms is written even when absent from the record)."""
    best: dict[int, Event] = {}
    for event in events:
        if event.poison:
            continue
        current = best.get(event.driver_id)
        if current is None or effective(event) >= effective(current):
            best[event.driver_id] = event
    return best


def effective(event: Event) -> tuple[int, int, int]:
    """The version as written: records always carry `created` (the event time when the workload had none)."""
    created = event.created_ms if event.created_ms is not None else event.event_ms
    return (event.event_ms, created, event.index)


def entity_key(driver_id: int, version: int = 3) -> str:
    return serialize_entity_key([("driver_id", ENTITY_VALUE_TYPES["INT64"], driver_id)], version).hex()


@dataclass
class Comparison:
    checked: int
    missing: list[int]
    regressed: list[int]  # stored an older version than the oracle's
    wrong: list[int]  # right version, other values

    @property
    def ok(self) -> bool:
        return not (self.missing or self.regressed or self.wrong)


def compare(read: Any, view: Any, expected: dict[int, Event]) -> Comparison:
    """Read every expected driver through `read(view, entity_key)` and compare with the oracle."""
    result = Comparison(len(expected), [], [], [])
    f32 = DTYPES["Float32"]
    for driver, event in expected.items():
        cells = read(view, entity_key(driver))
        if set(cells) != {"conv_rate", "acc_rate", "avg_daily_trips"}:
            result.missing.append(driver)
            continue
        stored = {(c.event_ms, NULL_MS if c.created_ms is None else c.created_ms) for c in cells.values()}
        want = effective(event)[:2]
        if stored != {want}:
            (result.regressed if max(stored) < want else result.wrong).append(driver)
            continue
        got = (decode_value(f32, cells["conv_rate"].value), decode_value(f32, cells["acc_rate"].value),
               decode_value(DTYPES["Int64"], cells["avg_daily_trips"].value))
        if got != (float(np.float32(event.conv_rate)), float(np.float32(event.acc_rate)), event.trips):
            result.wrong.append(driver)
    return result
