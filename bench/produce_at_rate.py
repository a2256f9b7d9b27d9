"""Produce driver_hourly_stats records at a fixed rate, event time = the time of production.

Runs as its own process in the latency benchmark, so that producing does not compete with the consumer.

    python bench/produce_at_rate.py BOOTSTRAP TOPIC RATE SECONDS ENTITIES
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import fastavro
import numpy as np
from confluent_kafka import Producer

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "driver_hourly_stats.avsc").read_text())
PARSED = fastavro.parse_schema({**SCHEMA, "fields": [
    {**f, "type": "long"} if isinstance(f["type"], dict) else f for f in SCHEMA["fields"]]})


def main() -> None:
    bootstrap, topic, rate, seconds, entities = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), \
        int(sys.argv[5])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    rng = np.random.default_rng(5)
    total = int(rate * seconds)
    started = time.monotonic()
    for i in range(total):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now_us = int(time.time() * 1_000_000)
        buf = io.BytesIO()
        driver = int(rng.integers(1, entities + 1))
        fastavro.schemaless_writer(buf, PARSED, {"driver_id": driver, "event_timestamp": now_us, "created": now_us,
                                                 "conv_rate": 0.5, "acc_rate": 0.5, "avg_daily_trips": i})
        producer.produce(topic, key=str(driver).encode(), value=buf.getvalue())
        producer.poll(0)
    producer.flush(60)
    print(total)


if __name__ == "__main__":
    main()
