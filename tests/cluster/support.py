"""What the cluster's fault tests share: a steady stream of the workload, the daemon's configuration for
the cluster, and the verdict with the tier's figures (the fault suite's verdict, tests/verdict.py, plus
what only a replicated deployment shows: CAS write timeouts met, pauses, duplicates on the dead-letter
topic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from stack import cluster as local_cluster
from tests.daemon import Daemon, Deployment
from tests.helpers import driver_view
from tests.scrape import Sampler, log_pauses, total
from tests.verdict import Figures, judge
from tests.workload import Event, entity_key, expected_state


def committed_total(deployment: Deployment) -> int:
    return sum(r.committed or 0 for r in deployment.lag())


def wait_for_progress(deployment: Deployment, since: int = 0, timeout_s: float = 90) -> int:
    """Until the group's commits have moved past `since`; returns the committed total."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = committed_total(deployment)
        if now > since:
            return now
        assert time.monotonic() < deadline, f"no commit past {since} within {timeout_s:.0f}s"
        time.sleep(0.3)


def group_state(bootstrap_servers: str, group: str) -> tuple[int, dict[str, set[int]]]:
    """The group's coordinator (broker id) and its members' partitions, as the coordinator has them.

    Asked through an admin client of its own: one that asked before the coordinator moved went on
    answering NOT_COORDINATOR for minutes (librdkafka 2.16's ConsumerGroupDescribe)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    members = {m.member_id: {tp.partition for tp in m.assignment.topic_partitions} for m in description.members}
    return description.coordinator.id, members


def wait_group(bootstrap_servers: str, group: str, members: int, partitions: int, timeout_s: float = 90
               ) -> tuple[int, dict[str, set[int]]]:
    """Until `members` members hold every one of `partitions` partitions between them."""
    deadline = time.monotonic() + timeout_s
    state: tuple[int, dict[str, set[int]]] | Exception | None = None
    while True:
        try:
            state = group_state(bootstrap_servers, group)
        except Exception as exc:  # noqa: BLE001 - a coordinator that moves or loads answers with an error
            state = exc
        if isinstance(state, tuple) and len(state[1]) == members and all(state[1].values()) and \
                set().union(*state[1].values()) == set(range(partitions)):
            return state
        assert time.monotonic() < deadline, f"group {group} did not settle on {members} members: {state!r}"
        time.sleep(0.3)


# The errors the writer met and sent its request again for (feature_consumer_write_errors_total{error}).
CAS_TIMEOUT = "WriteTimeout/CAS"


def daemon_config(cluster: local_cluster.ClusterEndpoints) -> dict[str, Any]:
    """The daemon's settings for the cluster, beside the topic, group and keyspace of its Deployment:
    all three contact points in the local data center, LOCAL_QUORUM writes and LOCAL_SERIAL Paxos (the
    bootstrap servers of all three brokers come from the endpoints)."""
    return {"cassandra": {"hosts": list(cluster.cql_hosts), "port": cluster.cql_port, "local_dc": cluster.datacenter,
                          "consistency": "LOCAL_QUORUM", "serial_consistency": "LOCAL_SERIAL"}}


class Stream:
    """Produces events in production order, a chunk every `chunk_s` at `per_second`, in a thread, until all
    are produced or `stop()`; `produced` is then the workload as far as it went (a prefix of it, which the
    oracle takes as it is). One idempotent producer (acks=all) to all three brokers."""

    def __init__(self, deployment: Deployment, events: list[Event], per_second: float, chunk_s: float = 0.5) -> None:
        self.deployment = deployment
        self.events = events
        self.chunk = max(1, round(per_second * chunk_s))
        self.chunk_s = chunk_s
        self.where: dict[int, tuple[int, int]] = {}
        self.count = 0  # events produced (acknowledged) so far
        self.error: str | None = None
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    @property
    def produced(self) -> list[Event]:
        return self.events[:self.count]

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the chunk being produced; wait for it."""
        self._stop.set()
        self.join()

    def join(self, timeout_s: float = 600) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the stream did not finish"
        assert self.error is None, self.error

    def wait_count(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count < min(count, len(self.events)):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {self.count} events produced in {timeout_s}s"
            time.sleep(0.1)

    def _run(self) -> None:
        producer = Producer({"bootstrap.servers": self.deployment.endpoints.bootstrap_servers,
                             "enable.idempotence": True, "linger.ms": 20, "delivery.timeout.ms": 120_000})
        errors: list[str] = []
        try:
            next_at = time.monotonic()
            for start in range(0, len(self.events), self.chunk):
                if self._stop.is_set():
                    break
                chunk = self.events[start:start + self.chunk]
                for event in chunk:
                    def delivered(err: Any, msg: Any, index: int = event.index) -> None:
                        if err is None:
                            self.where[index] = (msg.partition(), msg.offset())
                        else:
                            errors.append(str(err))

                    producer.produce(self.deployment.topic, key=event.key, value=event.value(), on_delivery=delivered)
                left = producer.flush(130)
                if left or errors:
                    self.error = f"producing failed: {left} not delivered, errors {errors[:3]}"
                    return
                self.count = start + len(chunk)
                next_at += self.chunk_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            self.finished.set()


@dataclass
class ClusterFigures:
    verdict: Figures
    fault: str  # what was done, in words
    cas_timeouts: int  # WriteTimeout/CAS met (and sent again) by the daemons
    errors: dict[str, int]  # every error the writers sent a request again for
    pauses: list[float]  # seconds each pause lasted, from the daemons' /metrics samples
    log_pauses: list[float]  # the same failures' spans as the daemons logged them
    transient_failures: int
    letters: int  # dead-letter messages, duplicates included
    seconds: float  # the test's time, set-up to verdict
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        v = self.verdict
        return {"test": v.test, "events": v.events, "fault": self.fault, "faults": v.faults,
                "cas_timeouts": self.cas_timeouts, "errors": self.errors,
                "pauses": [round(p, 1) for p in self.pauses], "log_pauses": [round(p, 1) for p in self.log_pauses],
                "transient_failures": self.transient_failures,
                "entities": v.entities, "lost": v.lost, "regressed": v.regressed, "wrong": v.wrong,
                "poison": v.poison, "dead_letters": v.dead_letters, "dead_letters_complete": v.dead_letters_complete,
                "dead_letter_messages": self.letters, "seconds": round(self.seconds, 1), "notes": self.notes}


REPORT: list[ClusterFigures] = []


def write_errors(samplers: Iterable[Sampler]) -> dict[str, int]:
    """feature_consumer_write_errors_total by error, summed over the daemons (their last figures)."""
    out: dict[str, int] = {}
    for sampler in samplers:
        for labels, value in sampler.last().get("feature_consumer_write_errors_total", {}).items():
            error = dict(labels)["error"]
            out[error] = out.get(error, 0) + int(value)
    return dict(sorted(out.items()))


def unsettled(reader: Any, drivers: Iterable[int]) -> list[int]:
    """Entities whose rows a LOCAL_SERIAL read finds other than a LOCAL_QUORUM read did: a Paxos round
    accepted by some replica and not committed (an unknown outcome left half done), which the serial read
    completes. Every round the daemon re-sent after a CAS timeout must have been settled one way or the
    other by the round that followed it."""
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    from consumer.cassandra.schema import table_name

    table = table_name(reader.options.keyspace, driver_view())
    cql = f"SELECT feature_name, value, event_ts, created_ts FROM {table} WHERE entity_key = %s"
    quorum = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
    serial = SimpleStatement(cql, consistency_level=ConsistencyLevel.LOCAL_SERIAL)
    out = []
    for driver in drivers:
        key = entity_key(driver)
        before = sorted(tuple(r.values()) for r in reader.session.execute(quorum, (key,)))
        if sorted(tuple(r.values()) for r in reader.session.execute(serial, (key,))) != before:
            out.append(driver)
    return out


def explain(reader: Any, events: list[Event], where: dict[int, tuple[int, int]], drivers: Iterable[int]) -> str:
    """For entities the verdict found wrong: the oracle's event, every event of the entity (production
    order, position, version), and what each node stores (at ONE, with the cells' write times: a
    conditional write's is its Paxos ballot's time) and holds in system.paxos for the partition."""
    from cassandra.query import SimpleStatement

    from consumer.cassandra.schema import table_name

    table = table_name(reader.options.keyspace, driver_view())
    expected = expected_state(events)
    lines: list[str] = []
    for driver in drivers:
        key = entity_key(driver)
        lines.append(f"driver {driver} (entity {key}): the oracle wants event {expected[driver].index} "
                     f"{expected[driver].version}")
        for event in (e for e in events if e.driver_id == driver):
            lines.append(f"  event {event.index} at {where.get(event.index)} version {event.version}"
                         f"{' POISON' if event.poison else ''}")
        for member in local_cluster.CASSANDRA_MEMBERS:
            try:
                with local_cluster.cql_session(member) as node:
                    rows = node.execute(SimpleStatement(
                        f"SELECT feature_name, event_ts, created_ts, writetime(value) AS at FROM {table} "
                        "WHERE entity_key = %s"), (key,))
                    lines.append(f"  {member}: {[tuple(r) for r in rows]}")
                    paxos = node.execute("SELECT * FROM system.paxos WHERE row_key = %s ALLOW FILTERING",
                                         (key.encode(),))
                    lines.append(f"  {member} system.paxos: {[r._asdict() for r in paxos]}")
            except Exception as exc:  # noqa: BLE001 - a diagnosis, best effort
                lines.append(f"  {member}: {exc!r}")
    return "\n".join(lines)


def verdict(name: str, fault: str, deployment: Deployment, reader: Any, events: list[Event],
            where: dict[int, tuple[int, int]], faults: int, samplers: list[Sampler], daemons: list[Daemon],
            started: float, notes: Iterable[str] = ()) -> ClusterFigures:
    """The fault suite's verdict (lag 0, nothing lost, regressed or wrong, dead letters complete), with the
    cluster's figures, reported at the end of the session whether it holds or not; and no entity with a
    Paxos round left unsettled."""
    assert deployment.total_lag() == 0, deployment.lag()
    errors = write_errors(samplers)
    judgement = judge(name, deployment, reader, events, where, faults)
    pending = unsettled(reader, sorted(expected_state(events)))
    pauses = [p.seconds for s in samplers for p in s.pauses()]
    logged = [p for d in daemons for p in log_pauses(d.log_path.read_text(errors="replace"))]
    failures = sum(int(total(s.last(), "feature_consumer_transient_failures_total")) for s in samplers)
    notes = list(notes)
    if pending:
        notes.append(f"entities with an unsettled Paxos round: {pending[:20]}")
    figures = ClusterFigures(judgement.figures, fault, errors.get(CAS_TIMEOUT, 0), errors, pauses, logged, failures,
                             judgement.letters, time.monotonic() - started, notes)
    REPORT.append(figures)
    print(f"{name}: {figures.row()}")
    bad = [*judgement.comparison.missing, *judgement.comparison.regressed, *judgement.comparison.wrong, *pending]
    if bad:
        print(explain(reader, events, where, bad[:5]))
    judgement.check()
    assert not pending, pending
    return figures
