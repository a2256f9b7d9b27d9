"""The README's demo: driver_hourly_stats events through the daemon into Feast's online table.

    .venv/bin/python examples/demo.py        (what `make demo` runs)

It starts the local stack, creates a topic and the Feast table, produces a few hours of driver events
(with late, duplicate and tied events, and one record that is not Avro), runs `feature-consumer run`
until the group has no lag, stops it with SIGTERM, and prints the online rows: every driver holds its
newest event, and the late events, produced last, did not overwrite it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastavro
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consumer.cassandra.writer import CassandraStore  # noqa: E402
from consumer.config import load_settings  # noqa: E402
from consumer.core.dtypes import DTYPES, ENTITY_VALUE_TYPES  # noqa: E402
from consumer.feast.keys import serialize_entity_key  # noqa: E402
from consumer.feast.values import decode_value  # noqa: E402
from consumer.kafka.offsets import OffsetReader, format_table  # noqa: E402
from stack import localstack  # noqa: E402

HOUR_US = 3_600_000_000
DRIVERS = [1001, 1002, 1003, 1004, 1005]


def avro(schema: object, record: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def main() -> int:
    endpoints, _ = localstack.up(["kafka", "cassandra"])
    run = time.strftime("%Y%m%d%H%M%S")
    topic = f"driver_stats_demo_{run}"
    workdir = Path(tempfile.mkdtemp(prefix="feature-consumer-demo-"))
    config = yaml.safe_load((ROOT / "examples" / "driver_stats.yaml").read_text())
    config["kafka"].update(bootstrap_servers=endpoints.bootstrap_servers, group_id=f"{topic}-group",
                           dead_letter_topic=f"{topic}.dead-letter")
    config["cassandra"].update(hosts=[endpoints.cql_host], port=endpoints.cql_port, consistency="ONE",
                               serial_consistency="SERIAL")
    config["batch"] = {"max_records": 200, "max_wait_ms": 200}
    config["views"][0]["topics"] = [topic]
    config["views"][0]["schema"]["file"] = str(ROOT / "schemas" / "driver_hourly_stats.avsc")
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    settings = load_settings(config_path)
    view = settings.views[0]

    admin = AdminClient({"bootstrap.servers": endpoints.bootstrap_servers})
    topics = [NewTopic(topic, 3, 1), NewTopic(settings.kafka.dead_letter_topic, 1, 1)]
    for future in admin.create_topics(topics).values():
        future.result(30)
    cli = [sys.executable, "-m", "consumer.cli"]
    subprocess.run([*cli, "init-schema", "-c", str(config_path), "--create-keyspace"], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"\ntopic {topic} (3 partitions), table \"{settings.cassandra.keyspace}\".\"{view.table}\"")

    schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "driver_hourly_stats.avsc").read_text()))
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers, "enable.idempotence": True})
    now_us = int(time.time() * 1_000_000) // HOUR_US * HOUR_US
    newest: dict[int, dict[str, object]] = {}
    late: dict[int, dict[str, object]] = {}
    produced = 0

    def send(record: dict[str, object] | None, driver: int, raw: bytes | None = None) -> None:
        nonlocal produced
        producer.produce(topic, key=str(driver).encode(), value=raw if raw is not None else avro(schema, record or {}))
        produced += 1

    for driver in DRIVERS:
        for hours_ago in range(6, 0, -1):  # six hourly events, oldest first
            record = {"driver_id": driver, "event_timestamp": now_us - hours_ago * HOUR_US,
                      "created": now_us - hours_ago * HOUR_US + 60_000_000,
                      "conv_rate": round(0.5 + driver % 10 / 20 - hours_ago / 100, 4),
                      "acc_rate": round(0.9 - hours_ago / 50, 4), "avg_daily_trips": 100 + driver % 10 * 10 + hours_ago}
            send(record, driver)
        newest[driver] = record
        send(record, driver)  # a duplicate of the newest event
        tie = dict(record, created=record["created"] - 30_000_000, conv_rate=0.111, avg_daily_trips=1)
        send(tie, driver)  # same event hour, older created time: must lose
        late[driver] = dict(record, event_timestamp=now_us - 5 * HOUR_US, created=now_us, conv_rate=0.0,
                            acc_rate=0.0, avg_daily_trips=0)
        send(late[driver], driver)  # a late event from five hours ago, produced last
    send(None, DRIVERS[0], raw=b"this is not Avro")
    assert producer.flush(30) == 0
    print(f"produced {produced} events for drivers {DRIVERS}: 6 hourly events each, a duplicate of the newest,\n"
          "a tie on the newest hour with an older created time, a late event from 5 hours ago produced last,\n"
          "and one record that is not Avro\n")

    log_path = workdir / "daemon.log"
    with log_path.open("wb") as log, OffsetReader(settings.kafka.admin_config(), settings.kafka.group_id) as lag:
        daemon = subprocess.Popen([*cli, "run", "-c", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            rows = lag.read([topic])
            if rows and all(r.lag == 0 for r in rows):
                break
            if daemon.poll() is not None or time.monotonic() - started > 120:
                print(log_path.read_text())
                raise SystemExit("the daemon did not catch up")
            time.sleep(0.5)
        print(f"feature-consumer caught up in {time.monotonic() - started:.1f}s; lag per partition:")
        print(format_table(rows))
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
    print(f"SIGTERM: drained, committed, left the group, exit code {code}\n")

    store = CassandraStore(settings.cassandra.options())
    f32, i64 = DTYPES["Float32"], DTYPES["Int64"]
    print(f"online rows in \"{settings.cassandra.keyspace}\".\"{view.table}\" (what Feast serves):")
    print(f"{'driver_id':>9}  {'event_timestamp (UTC)':<21} {'conv_rate':>9} {'acc_rate':>8} {'avg_daily_trips':>15}"
          "   newest kept   late event ignored")
    ok = code == 0
    for driver in DRIVERS:
        key = serialize_entity_key([("driver_id", ENTITY_VALUE_TYPES["INT64"], driver)]).hex()
        cells = store.read(view, key)
        conv = decode_value(f32, cells["conv_rate"].value)
        acc = decode_value(f32, cells["acc_rate"].value)
        trips = decode_value(i64, cells["avg_daily_trips"].value)
        event_ms = cells["conv_rate"].event_ms
        want = newest[driver]
        kept = event_ms == int(want["event_timestamp"]) // 1000 and trips == want["avg_daily_trips"]
        ignored = trips != late[driver]["avg_daily_trips"]
        ok &= kept and ignored
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event_ms / 1000))
        print(f"{driver:>9}  {stamp:<21} {conv:>9.4f} {acc:>8.4f} {trips:>15}   {'yes' if kept else 'NO':>11}"
              f"   {'yes' if ignored else 'NO':>18}")
    store.close()

    letters = subprocess.run(
        [sys.executable, "-c", (
            "import sys; from confluent_kafka import Consumer, TopicPartition\n"
            f"c = Consumer({{'bootstrap.servers': '{endpoints.bootstrap_servers}', 'group.id': 'demo-dlq-{run}'}})\n"
            f"c.assign([TopicPartition('{settings.kafka.dead_letter_topic}', 0, 0)])\n"
            "ms = [m for m in c.consume(10, 5.0) if m.error() is None]\n"
            "for m in ms: print(dict((k, v.decode()) for k, v in m.headers())['x-dead-letter-reason'])\n"
            "c.close()")],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()
    print(f"\ndead-letter topic {settings.kafka.dead_letter_topic}: {len(letters)} record(s)")
    for reason in letters:
        print(f"  reason: {reason}")
    ok &= len(letters) == 1
    print("\n" + ("every driver holds its newest event; late, duplicate and tied events did not overwrite it"
                  if ok else "UNEXPECTED RESULT: see above"))
    print("the stack keeps running; stop it with `make stack-down`")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
