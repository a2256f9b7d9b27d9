"""Guarded materialization, proven with Feast 0.67 itself (in its own virtualenv, see stack/feastenv.py).

A Feast repo with a Kafka-fed view whose batch source is a parquet file of history. The daemon
(`feature-consumer run --feast-repo`) streams events for the same entities, some newer than the history
and some older, with ties on event time both ways; a first part is written before materialization
starts, the rest is produced while it runs. Then Feast's own `get_online_features` must serve, for every
entity, the newest version among the stream and the offline rows of the window (event time, then created
time; a missing created time is the oldest). With `feature-consumer materialize` it does; the same run with
Feast's `feast materialize` regresses entities, and the test counts them side by side (docs/feast.md).

The registry side: `materialize-incremental` records each view's interval when the view is done and
nothing for a view that failed; runs go on from the recorded end (or now - ttl), and Feast's own
`feast materialize-incremental` goes on from what we recorded.
"""

from __future__ import annotations

import json
import random
import subprocess
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stack import feastenv
from tests.feast_compat.test_feast_serving import wait_caught_up
from tests.helpers import DRIVER_SCHEMA, DRIVER_SCHEMA_PATH, avro_body, plain_schema
from tests.topics import create_topics
from tests.workload import entity_key

pytestmark = [pytest.mark.feast, pytest.mark.integration]

REPO = '''
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, KafkaSource, ValueType
from feast.data_format import AvroFormat
from feast.types import Float32, Int64

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
schema_json = {schema_json!r}
views = []
for name, topic in {views!r}:
    history = FileSource(name=f"{{name}}_history", path=f"{{name}}.parquet", timestamp_field="event_timestamp",
                         created_timestamp_column="created")
    source = KafkaSource(name=f"{{name}}_stream", kafka_bootstrap_servers={bootstrap!r}, topic=topic,
                         timestamp_field="event_timestamp", created_timestamp_column="created",
                         message_format=AvroFormat(schema_json), batch_source=history)
    globals()[name] = FeatureView(
        name=name, entities=[driver], ttl=timedelta(days={ttl_days}), source=source, online=True,
        schema=[Field(name="driver_id", dtype=Int64), Field(name="conv_rate", dtype=Float32),
                Field(name="acc_rate", dtype=Float32), Field(name="avg_daily_trips", dtype=Int64)])
'''

QUERY = '''
import json, sys, warnings
warnings.filterwarnings("ignore")
from feast import FeatureStore
request = json.loads(sys.stdin.read())
store = FeatureStore(request["repo"])
if request.get("intervals"):
    out = {fv.name: [[s.isoformat(), e.isoformat()] for s, e in fv.materialization_intervals]
           for fv in store.list_feature_views()}
else:
    rows = [{"driver_id": d} for d in request["drivers"]]
    features = [f"{request['view']}:{f}" for f in ("avg_daily_trips", "conv_rate")]
    out = store.get_online_features(features=features, entity_rows=rows).to_dict(include_event_timestamps=True)
print(json.dumps(out))
'''

SCHEMA = plain_schema(DRIVER_SCHEMA)


@dataclass(frozen=True)
class Version:
    """One version of a driver's features: `trips` is unique to it, so what Feast serves names it."""

    driver: int
    event_s: int
    created_s: int | None
    trips: int
    source: str  # "offline", "stream-before", "stream-during"

    @property
    def order(self) -> tuple[int, float]:
        return (self.event_s, float("-inf") if self.created_s is None else self.created_s)


@dataclass
class Workload:
    offline: list[Version]  # the parquet file, in its order (rows outside the window included)
    before: list[Version]  # streamed and written before materialization starts
    during: list[Version]  # streamed while it runs
    start: datetime
    end: datetime

    def newest(self, stream: bool = True) -> dict[int, Version]:
        """The oracle: per driver, the greatest (event time, created time) among the stream and the offline
        rows of [start, end]; a missing created time is the oldest."""
        lo, hi = int(self.start.timestamp()), int(self.end.timestamp())
        best: dict[int, Version] = {}
        streamed = [*self.before, *self.during] if stream else []
        for v in [*(v for v in self.offline if lo <= v.event_s <= hi), *streamed]:
            if v.driver not in best or v.order > best[v.driver].order:
                best[v.driver] = v
        return best


def workload(drivers: int, seed: int) -> Workload:
    rng = random.Random(seed)
    now = int(time.time())
    end = now - 3600
    start = end - 2 * 86_400
    serial = iter(range(1, 10**9))
    offline: list[Version] = []
    before: list[Version] = []
    during: list[Version] = []
    for driver in range(1, drivers + 1):
        taken: set[tuple[int, int | None]] = set()  # no two versions of a driver tie on both times

        def version(event: int, created: int | None, source: str, driver: int = driver,
                    taken: set[tuple[int, int | None]] = taken) -> Version | None:
            if (event, created) in taken:
                return None
            taken.add((event, created))
            return Version(driver, event, created, next(serial), source)

        rows = [version(e, e + rng.randrange(0, 600) if rng.random() < 0.85 else None, "offline")
                for e in (start + rng.randrange(60, 2 * 86_400 - 60) for _ in range(rng.randrange(1, 5)))]
        newest = max((v for v in rows if v), key=lambda v: v.order)
        if rng.random() < 0.3:  # a tie on event time inside the history: the later created time must win
            rows.append(version(newest.event_s, (newest.created_s or newest.event_s) + rng.choice([-7, 7]),
                                "offline"))
        if rng.random() < 0.15:  # rows outside the window: never materialized
            rows.append(version(start - rng.randrange(60, 86_400), start, "offline"))
            rows.append(version(end + rng.randrange(60, 3000), end + 4000, "offline"))
        kept = [v for v in rows if v is not None]
        offline.extend(kept)
        top = max(kept, key=lambda v: v.order)
        for _ in range(rng.randrange(0, 4)):
            roll = rng.random()
            if roll < 0.35:  # newer than the history
                event = top.event_s + rng.randrange(1, 7200)
                created = event + rng.randrange(0, 60)
            elif roll < 0.7:  # older
                event = top.event_s - rng.randrange(1, 86_400)
                created = event + rng.randrange(0, 60)
            else:  # a tie on event time with the history's newest row: the created time decides, either way
                event = top.event_s
                created = (top.created_s if top.created_s is not None else event) + rng.choice([-30, -1, 1, 30])
            during_run = rng.random() < 0.5
            streamed = version(event, created, "stream-during" if during_run else "stream-before")
            if streamed is not None:
                (during if during_run else before).append(streamed)
    rng.shuffle(offline)
    rng.shuffle(before)
    rng.shuffle(during)
    return Workload(offline, before, during, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))


def history_frame(versions: list[Version]) -> pd.DataFrame:
    stamp = "datetime64[us, UTC]"
    return pd.DataFrame({
        "driver_id": [v.driver for v in versions],
        "event_timestamp": pd.Series(pd.to_datetime([v.event_s for v in versions], unit="s", utc=True), dtype=stamp),
        "created": pd.Series(pd.to_datetime([v.created_s for v in versions], unit="s", utc=True), dtype=stamp),
        "conv_rate": [v.trips / 1e6 for v in versions],
        "acc_rate": [0.5 for _ in versions],
        "avg_daily_trips": [v.trips for v in versions],
    }).astype({"conv_rate": "float32", "acc_rate": "float32"})


def record(v: Version) -> bytes:
    assert v.created_s is not None
    return avro_body(SCHEMA, {"driver_id": v.driver, "event_timestamp": v.event_s * 1_000_000,
                              "created": v.created_s * 1_000_000, "conv_rate": v.trips / 1e6, "acc_rate": 0.5,
                              "avg_daily_trips": v.trips})


class Repo:
    """A Feast repo in its own project and keyspace, applied with `feast apply`."""

    def __init__(self, path: Path, stack: Any, keyspace: str, views: list[tuple[str, str]],
                 ttl_days: int = 30) -> None:
        self.path, self.stack, self.views = path, stack, views
        self.python = feastenv.ensure(with_project=True)
        path.mkdir()
        (path / "feature_store.yaml").write_text(yaml.safe_dump({
            "project": f"mat_{uuid.uuid4().hex[:8]}", "registry": "registry.db", "provider": "local",
            "online_store": {"type": "cassandra", "hosts": [stack.cql_host], "port": stack.cql_port,
                             "keyspace": keyspace, "protocol_version": 4},
            "entity_key_serialization_version": 3,
        }))
        (path / "repo.py").write_text(textwrap.dedent(REPO).format(
            schema_json=DRIVER_SCHEMA_PATH.read_text(), views=views, bootstrap=stack.bootstrap_servers,
            ttl_days=ttl_days))

    def history(self, view: str, versions: list[Version]) -> None:
        history_frame(versions).to_parquet(self.path / f"{view}.parquet", index=False)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command of the Feast virtualenv (`feast`, `feature-consumer`) in the repo."""
        done = subprocess.run([str(self.python.parent / argv[0]), *argv[1:]], cwd=self.path, capture_output=True,
                              text=True, timeout=600)
        if check:
            assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def ask(self, request: dict[str, Any]) -> Any:
        answer = subprocess.run([str(self.python), "-c", QUERY], input=json.dumps({"repo": str(self.path), **request}),
                                capture_output=True, text=True, timeout=300)
        assert answer.returncode == 0, answer.stderr[-3000:]
        return json.loads(answer.stdout.strip().splitlines()[-1])

    def intervals(self) -> dict[str, list[tuple[datetime, datetime]]]:
        return {name: [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e in spans]
                for name, spans in self.ask({"intervals": True}).items()}


@dataclass
class Outcome:
    checked: int
    regressed: list[int]  # served an older version than the oracle's newest
    missing: list[int]
    # The served event time is not that of a version served. Feast writes each feature of an entity as a
    # row of its own (concurrent INSERTs), so a stream write can land between its rows of one entity; its
    # read then serves one version's trips and another's conversion rate, with one of their event times.
    timestamps_wrong: list[int]
    torn: list[int] = field(default_factory=list)  # trips and conversion rate of two different versions
    interleaved: int = 0  # stream writes between the materialization's first and last write


def served_versus_oracle(repo: Repo, view: str, load: Workload) -> Outcome:
    newest = load.newest()
    by_trips = {v.trips: v for v in [*load.offline, *load.before, *load.during]}
    drivers = sorted(newest)
    served = repo.ask({"view": view, "drivers": drivers})
    outcome = Outcome(len(drivers), [], [], [])
    for i, driver in enumerate(drivers):
        trips = served["avg_daily_trips"][i]
        if trips is None:
            outcome.missing.append(driver)
            continue
        got = by_trips[trips]
        if got != newest[driver]:
            assert got.order < newest[driver].order, (got, newest[driver])
            outcome.regressed.append(driver)
        rate = by_trips[round(served["conv_rate"][i] * 1e6)]
        if rate != got:
            outcome.torn.append(driver)
        if served["avg_daily_trips__ts"][i] not in (got.event_s, rate.event_s):
            outcome.timestamps_wrong.append(driver)
    return outcome


def stream_and_materialize(stack: Any, cql_session: Any, keyspace: str, tmp_path: Path, load: Workload,
                           ours: bool) -> Outcome:
    """The daemon streams `load.before` until written, then `load.during` while materialization runs (ours or
    Feast's) over [load.start, load.end]; what Feast serves afterwards, against the oracle."""
    run = uuid.uuid4().hex[:8]
    topic, group = f"mat_{run}", f"mat_{run}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    create_topics(admin, [NewTopic(topic, 3, 1), NewTopic(f"{group}.dlq", 1, 1)])
    repo = Repo(tmp_path / f"repo_{run}", stack, keyspace, [("driver_stats", topic)])
    repo.history("driver_stats", load.offline)
    repo.run("feast", "apply")

    config = tmp_path / f"daemon_{run}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"group_id": group, "dead_letter_topic": f"{group}.dlq"},
        "cassandra": {"consistency": "ONE", "serial_consistency": "SERIAL"},
        "batch": {"max_records": 50, "max_wait_ms": 50},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }))
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})

    def produce(versions: list[Version]) -> None:
        for v in versions:
            producer.produce(topic, key=str(v.driver).encode(), value=record(v))
        producer.poll(0)

    log = tmp_path / f"daemon_{run}.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([str(repo.python), "-m", "consumer.cli", "run", "--feast-repo", str(repo.path),
                                   "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
        try:
            produce(load.before)
            assert producer.flush(30) == 0
            wait_caught_up(stack.bootstrap_servers, group, [topic], daemon, log)
            window = [load.start.isoformat(), load.end.isoformat()]
            command = ["feature-consumer", "materialize", "--feast-repo", str(repo.path), *window] if ours else \
                ["feast", "materialize", *window]
            result: list[subprocess.CompletedProcess[str]] = []
            materializing = threading.Thread(target=lambda: result.append(repo.run(*command, check=False)))
            materializing.start()
            # The second part of the stream arrives in small bursts, spread over 20 s, for as long as
            # materialization runs; what is left then comes at once.
            pending = list(load.during)
            pause = 20 / max(len(pending) / 5, 1)
            while materializing.is_alive() and pending:
                produce(pending[:5])
                del pending[:5]
                time.sleep(pause)
            produce(pending)
            materializing.join()
            assert result and result[0].returncode == 0, result and result[0].stdout + result[0].stderr[-3000:]
            assert producer.flush(30) == 0
            wait_caught_up(stack.bootstrap_servers, group, [topic], daemon, log)
        finally:
            daemon.terminate()
            assert daemon.wait(30) == 0, log.read_text()[-4000:]
    if ours:
        assert "recorded in the registry" in result[0].stdout, result[0].stdout
    outcome = served_versus_oracle(repo, "driver_stats", load)
    project = yaml.safe_load((repo.path / "feature_store.yaml").read_text())["project"]
    outcome.interleaved = interleaved(cql_session, f'"{keyspace}"."{project}_driver_stats"', load)
    return outcome


def interleaved(cql_session: Any, table: str, load: Workload) -> int:
    """How many values the stream wrote (of its second part) while the materialization was writing: between
    the first and the last write time of the values it left (Cassandra's WRITETIME of each cell)."""
    written = {row.entity_key: row.w for row in cql_session.execute(
        f"SELECT entity_key, WRITETIME(value) AS w FROM {table} WHERE feature_name = 'avg_daily_trips' "
        "ALLOW FILTERING")}
    by_source: dict[str, list[int]] = {"offline": [], "stream-during": [], "stream-before": []}
    for driver, version in load.newest().items():
        when = written.get(entity_key(driver))
        if when is not None:
            by_source[version.source].append(when)
    materialized = by_source["offline"]
    return sum(1 for w in by_source["stream-during"] if min(materialized) < w < max(materialized))


def test_guarded_materialization_serves_the_newest_version_where_feasts_regresses(stack, cql_session,
                                                                                   tmp_path: Path) -> None:
    load = workload(drivers=1000, seed=11)
    outcomes = {}
    for ours in (True, False):
        keyspace = f"ks_mat_{uuid.uuid4().hex[:8]}"
        cql_session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        try:
            outcomes[ours] = stream_and_materialize(stack, cql_session, keyspace, tmp_path, load, ours)
        finally:
            cql_session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    guarded, feast = outcomes[True], outcomes[False]
    # Entities whose newest version was streamed, and written, before Feast's materialization began: its
    # blind writes of the history's newest row replace each of them, whatever streams afterwards.
    newest = load.newest()
    offline_top = load.newest(stream=False)
    overwritten = [d for d, v in newest.items() if v.source == "stream-before" and d in offline_top]
    print(f"\nregressed entities of {guarded.checked}: feature-consumer materialize {len(guarded.regressed)}, "
          f"feast materialize {len(feast.regressed)} (at least {len(overwritten)} were certain to); stream values "
          f"written among the materialization's writes: {guarded.interleaved} and {feast.interleaved}; torn "
          f"entities (features of two versions): {len(guarded.torn)} and {len(feast.torn)}")
    assert (guarded.regressed, guarded.missing, guarded.timestamps_wrong, guarded.torn) == ([], [], [], [])
    assert guarded.interleaved > 0  # the stream did write while the materialization wrote
    assert feast.missing == [] and feast.timestamps_wrong == []
    assert set(overwritten) <= set(feast.regressed) and len(overwritten) > 0


def test_intervals_are_recorded_per_view_done_and_runs_go_on_from_them(stack, cql_session, keyspace: str,
                                                                        tmp_path: Path) -> None:
    load = workload(drivers=40, seed=5)
    repo = Repo(tmp_path / "repo", stack, keyspace, [("first", "t_first"), ("second", "t_second")], ttl_days=3)
    for view in ("first", "second"):
        repo.history(view, load.offline)
    repo.run("feast", "apply")
    project = yaml.safe_load((repo.path / "feature_store.yaml").read_text())["project"]
    cql_session.execute(f'DROP TABLE "{keyspace}"."{project}_second"')

    # A run in which `second` fails (its table is gone): `first` is recorded, `second` is not.
    end1 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    began = datetime.now(UTC)
    failed = repo.run("feature-consumer", "materialize-incremental", "--feast-repo", ".", end1.isoformat(),
                      check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "second: " in failed.stdout and "FAILED" in failed.stdout and "does not exist" in failed.stdout
    intervals = repo.intervals()
    assert intervals["second"] == []
    ((start1, recorded1),) = intervals["first"]
    assert recorded1 == end1
    assert began - timedelta(days=3, seconds=5) <= start1 <= datetime.now(UTC) - timedelta(days=3)  # now - ttl
    first_rows = cql_session.execute(f'SELECT count(*) FROM "{keyspace}"."{project}_first"').one()
    assert first_rows.count > 0

    # The table back, the same command goes on: `first` from where it ended, `second` from now - ttl.
    repo.run("feature-consumer", "init-schema", "--feast-repo", ".")
    end2 = end1 + timedelta(minutes=10)
    again = repo.run("feature-consumer", "materialize-incremental", "--feast-repo", ".", end2.isoformat())
    assert again.stdout.count("recorded in the registry") == 2, again.stdout
    intervals = repo.intervals()
    assert intervals["first"][1] == (end1, end2)
    ((start2, recorded2),) = intervals["second"]
    assert recorded2 == end2 and start2 > start1

    # Up to date: nothing to do, nothing recorded. Feast's own incremental run goes on from our end.
    same = repo.run("feature-consumer", "materialize-incremental", "--feast-repo", ".", end2.isoformat())
    assert same.stdout.count("nothing to do") == 2
    end3 = end2 + timedelta(minutes=10)
    repo.run("feast", "materialize-incremental", end3.isoformat(), "--views", "first")
    assert repo.intervals()["first"][2] == (end2, end3)
    listed = repo.run("feast", "feature-views", "list").stdout
    assert all(line.split()[-1] == "AVAILABLE_ONLINE" for line in listed.splitlines() if line.split()[0] in
               ("first", "second")), listed
