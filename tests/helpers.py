"""Small builders shared by the tests: messages, Avro bodies, views."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fastavro

from consumer.core.views import FeatureView
from consumer.decode.schema import strip_logical_types
from stack.example import SCHEMA_PATH, example_view_spec

ROOT = Path(__file__).resolve().parents[1]
DRIVER_SCHEMA_PATH = SCHEMA_PATH
DRIVER_SCHEMA: dict[str, Any] = json.loads(DRIVER_SCHEMA_PATH.read_text())
T0_MICROS = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
NOW_MS = T0_MICROS // 1000 + 3_600_000

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout_s: float = 60, what: str = "condition") -> T:
    """Poll until the predicate returns something true, and return it; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class FakeMessage:
    """Stands in for confluent_kafka.Message in pure tests (same accessor methods)."""

    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


def avro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(json.dumps(schema))), record)
    return buf.getvalue()


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def driver_record(driver_id: int = 1001, ts: int = T0_MICROS, created: int = T0_MICROS, conv: float = 0.5,
                  acc: float = 0.25, trips: int = 7) -> dict[str, Any]:
    """A driver_hourly_stats record; timestamps in microseconds (written as plain longs)."""
    return {"driver_id": driver_id, "event_timestamp": ts, "created": created, "conv_rate": conv,
            "acc_rate": acc, "avg_daily_trips": trips}


def plain_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema with timestamp logical types removed, to write raw integers."""
    result: dict[str, Any] = strip_logical_types(schema)
    return result


def driver_body(**fields: Any) -> bytes:
    return avro_body(plain_schema(DRIVER_SCHEMA), driver_record(**fields))


def driver_view_spec(**overrides: Any) -> dict[str, Any]:
    """The config-file form of the example driver_hourly_stats view (stack/example.py)."""
    spec = example_view_spec("driver_stats")
    spec.update(overrides)
    return spec


def driver_view(**overrides: Any) -> FeatureView:
    return FeatureView.model_validate(driver_view_spec(**overrides))
