"""Running the real daemon (`feature-consumer run`) as a subprocess against the local stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.kafka.offsets import OffsetReader, PartitionLag
from stack.cluster import ClusterEndpoints
from stack.example import example_view_spec
from stack.localstack import Endpoints
from tests.topics import create_topics
from tests.workload import Event


@dataclass
class Deployment:
    """One daemon configuration: its topic, dead-letter topic, group, keyspace and config file."""

    endpoints: Endpoints | ClusterEndpoints
    topic: str
    keyspace: str
    workdir: Path
    partitions: int = 4
    batch: dict[str, Any] = field(default_factory=lambda: {"max_records": 500, "max_wait_ms": 200})
    run: dict[str, Any] = field(default_factory=lambda: {"drain_timeout_s": 15, "backoff_min_ms": 100,
                                                         "backoff_max_ms": 2000})
    extra: dict[str, Any] = field(default_factory=dict)
    # Registry framing: records carry a schema id, resolved through this registry URL.
    registry_url: str | None = None
    # Another view than the seed's driver_hourly_stats (config-file form; its topic is replaced).
    view: dict[str, Any] | None = None
    # The topics' replicas and settings (the cluster's: 3 replicas, min.insync.replicas=2), the dead-letter
    # topic's included.
    replicas: int = 1
    topic_config: dict[str, str] = field(default_factory=dict)
    _lag: OffsetReader | None = field(default=None, repr=False)

    @property
    def group(self) -> str:
        return f"{self.topic}-group"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dead-letter"

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.topic}.yaml"

    def write_config(self, metrics_port: int = 0) -> Path:
        config: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.endpoints.bootstrap_servers, "group_id": self.group,
                      "dead_letter_topic": self.dead_letter_topic, "session_timeout_ms": 10_000},
            "cassandra": {"hosts": [self.endpoints.cql_host], "port": self.endpoints.cql_port,
                          "keyspace": self.keyspace, "consistency": "ONE", "serial_consistency": "SERIAL"},
            "batch": self.batch,
            "run": self.run,
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "views": [{**self.view, "topics": [self.topic]} if self.view else
                      example_view_spec(self.topic, registry=self.registry_url is not None)],
        }
        if self.registry_url:
            config["schema_registry"] = {"url": self.registry_url}
        for section, values in self.extra.items():
            config.setdefault(section, {}).update(values)
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    def create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.endpoints.bootstrap_servers})
        create_topics(admin, [NewTopic(self.topic, self.partitions, self.replicas, config=self.topic_config),
                              NewTopic(self.dead_letter_topic, 1, self.replicas, config=self.topic_config)])

    def produce(self, events: Iterable[Event], encode: Callable[[Event], bytes] | None = None
                ) -> dict[int, tuple[int, int]]:
        """Produce the events (plain Avro bodies unless `encode` says otherwise); event index -> (partition,
        offset)."""
        producer = Producer({"bootstrap.servers": self.endpoints.bootstrap_servers, "enable.idempotence": True,
                             "linger.ms": 20})
        where: dict[int, tuple[int, int]] = {}
        for count, event in enumerate(events, 1):
            value = event.value() if encode is None or event.poison else encode(event)

            def delivered(err: Any, msg: Any, index: int = event.index) -> None:
                if err is None:
                    where[index] = (msg.partition(), msg.offset())

            producer.produce(self.topic, key=event.key, value=value, on_delivery=delivered)
            if count % 10_000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        return where

    def lag(self) -> list[PartitionLag]:
        if self._lag is None:
            # One client for all the polling: librdkafka handles are not meant to be made by the hundred.
            self._lag = OffsetReader({"bootstrap.servers": self.endpoints.bootstrap_servers}, self.group)
        return self._lag.read([self.topic])

    def close(self) -> None:
        if self._lag is not None:
            self._lag.close()
            self._lag = None

    def total_lag(self) -> int | None:
        rows = self.lag()
        if any(r.committed is None and r.log_end > 0 for r in rows):
            return None
        return sum(r.lag or 0 for r in rows)

    def wait_caught_up(self, timeout_s: float = 120, daemons: Iterable[Daemon] = ()) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.total_lag() == 0:
                return
            for daemon in daemons:
                daemon.assert_alive()
            time.sleep(0.5)
        diagnoses = "".join(f"\n--- {d.log_path.name}: stacks and last log lines\n{d.diagnose()}" for d in daemons)
        raise AssertionError(f"group {self.group} did not catch up in {timeout_s}s: {self.lag()}{diagnoses}")

    def dead_letters(self, expected: int, timeout_s: float = 30) -> list[Any]:
        """Every record on the dead-letter topic, read up to its log end (duplicates included: at-least-once).
        `expected` distinct records must be there; waits up to `timeout_s` for them."""
        consumer = Consumer({"bootstrap.servers": self.endpoints.bootstrap_servers, "group.id": f"{self.group}-dlq",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        tp = TopicPartition(self.dead_letter_topic, 0, 0)
        consumer.assign([tp])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                while len(out) < end and time.monotonic() < deadline:
                    out.extend(m for m in consumer.consume(500, 1.0) if m.error() is None)
                distinct = {(h.get("x-dead-letter-original-partition"), h.get("x-dead-letter-original-offset"))
                            for h in ({k: v for k, v in m.headers() or []} for m in out)}
                if len(distinct) >= expected:
                    break
                time.sleep(0.5)
        finally:
            consumer.close()
        return out


COORDINATOR_NOT_READY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                         KafkaError.COORDINATOR_NOT_AVAILABLE}


def members(admin: AdminClient, group: str) -> dict[str, set[int]]:
    """Consumer id -> partitions it is assigned, as the group coordinator has it."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return {m.member_id: {tp.partition for tp in m.assignment.topic_partitions} for m in description.members}


def wait_members(admin: AdminClient, group: str, count: int, partitions: int,
                 timeout_s: float = 60) -> dict[str, set[int]]:
    """Until the group has `count` members, each holding a partition, and together all `partitions`.

    The cooperative assignor rebalances in two steps (revoke, then assign): a member count alone can be
    reached while partitions are still unowned (a member just left, the survivor not yet given its).
    """
    deadline = time.monotonic() + timeout_s
    seen: dict[str, set[int]] = {}
    while time.monotonic() < deadline:
        try:
            seen = members(admin, group)
        except KafkaException as exc:
            # A broker just started has not loaded its group coordinator yet (NOT_COORDINATOR): ask again.
            if not (exc.args[0].retriable() or exc.args[0].code() in COORDINATOR_NOT_READY):
                raise
            time.sleep(0.3)
            continue
        if len(seen) == count and all(seen.values()) and set().union(*seen.values()) == set(range(partitions)):
            return seen
        time.sleep(0.3)
    raise AssertionError(f"group {group} did not settle on {count} members owning its {partitions} partitions: "
                         f"{seen}")


def committed_total(deployment: Deployment) -> int:
    return sum(r.committed or 0 for r in deployment.lag())


def wait_for_progress(deployment: Deployment, since: int = 0, timeout_s: float = 60) -> None:
    """Until the group's commits have moved past `since` (the consumer is mid-stream)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if committed_total(deployment) > since:
            return
        time.sleep(0.2)
    raise AssertionError("no commit within the time allowed")


class SlowProducer:
    """Produces chunks of events with a pause after each, in a thread, while a test changes the group."""

    def __init__(self, deployment: Deployment, chunks: list[list[Event]], pause_s: float) -> None:
        self.where: dict[int, tuple[int, int]] = {}  # event index -> (partition, offset)
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(deployment, chunks, pause_s))

    def _run(self, deployment: Deployment, chunks: list[list[Event]], pause_s: float) -> None:
        for chunk in chunks:
            self.where.update(deployment.produce(chunk))
            time.sleep(pause_s)
        self.done.set()

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """Wait for the last chunk; fails when producing failed."""
        self._thread.join()
        assert self.done.is_set(), "producing the events failed (see the thread's traceback above)"


def die_with_parent() -> None:
    """Linux: SIGKILL the daemon if the test process dies first (so no consumer is left behind)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Daemon:
    """`feature-consumer run` in a subprocess; its output goes to a log file next to the config."""

    def __init__(self, deployment: Deployment, name: str = "d0", env: dict[str, str] | None = None) -> None:
        self.deployment = deployment
        self.log_path = deployment.workdir / f"{deployment.topic}.{name}.log"
        cli = [sys.executable, "-m", "consumer.cli", "run", "-c", str(deployment.config_path)]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cli, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)

    def assert_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"daemon exited with {code}; log:\n{self.tail()}")

    def log(self) -> str:
        """All it has logged: what a test looks for (or must not find) may be anywhere in it."""
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 6000) -> str:
        """The end of the log, for a failure's message."""
        return self.log()[-chars:]

    def diagnose(self, lines: int = 200) -> str:
        """Every thread's stack (the daemon prints them on SIGUSR1 and goes on) after its last log lines,
        librdkafka's repeated reconnect attempts left out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
        kept = [line for line in self.log_path.read_text(errors="replace").splitlines()
                if "Connection refused" not in line]
        return "\n".join(kept[-lines:])

    def terminate(self, timeout_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def framed_encoder(registry_url: str, topic: str, schema: dict[str, Any]) -> Callable[[Event], bytes]:
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), json.dumps(schema))
    ctx = SerializationContext(topic, MessageField.VALUE)

    def encode(event: Event) -> bytes:
        return bytes(serializer(event.record(), ctx))

    return encode
