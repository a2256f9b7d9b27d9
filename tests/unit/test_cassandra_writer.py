"""The Cassandra writer without Cassandra: how it reads not-applied answers (shaped as Cassandra 5 returns
them), and how it gives up when its time budget runs out."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from consumer.cassandra.connection import CassandraOptions
from consumer.cassandra.rounds import answer_rows
from consumer.cassandra.writer import CassandraStore
from consumer.core import guard
from consumer.core.errors import StoreUnavailable
from consumer.core.guard import NULL_MS, Known, Op, Step
from consumer.core.store import EncodedRows
from tests.helpers import driver_view

UPDATE = Step(Op.UPDATE_OLDER, 1000)
T5 = datetime(1970, 1, 1, 0, 0, 5)  # the driver returns naive UTC datetimes


def test_a_single_update_answer_is_the_row_of_its_one_feature() -> None:
    # No key columns in a single statement's answer: only [applied] and the condition's columns.
    answer = answer_rows({"acc_rate": UPDATE}, [{"[applied]": False, "event_ts": T5}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": Known(True, 5000, None)}


def test_a_single_update_on_a_missing_row_answers_nothing_but_applied() -> None:
    answer = answer_rows({"acc_rate": UPDATE}, [{"[applied]": False}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": guard.MISSING}


def test_a_single_update_on_a_row_without_event_ts() -> None:
    answer = answer_rows({"acc_rate": UPDATE}, [{"[applied]": False, "event_ts": None}])
    assert guard.learn(["acc_rate"], answer) == {"acc_rate": Known(True, NULL_MS, None)}


def test_a_batch_answer_names_its_rows_and_leaves_missing_ones_out() -> None:
    rows = [{"[applied]": False, "entity_key": "k", "feature_name": "a", "event_ts": T5, "created_ts": None}]
    answer = answer_rows({"a": UPDATE, "b": UPDATE}, rows)
    assert guard.learn(["a", "b"], answer) == {"a": Known(True, 5000, NULL_MS), "b": guard.MISSING}


class _Prepared:
    def bind(self, params: object) -> object:
        return params


class _SilentSession:
    """Accepts every request and never answers (a Cassandra node that hangs)."""

    def __init__(self) -> None:
        self.sent = 0

    def prepare(self, _cql: str) -> _Prepared:
        return _Prepared()

    def execute_async(self, _request: object) -> object:
        self.sent += 1

        class Future:
            def add_callbacks(self, callback: object, errback: object, callback_args: object = (),
                              errback_args: object = ()) -> None:
                pass

        return Future()


def test_a_write_gives_up_when_its_budget_runs_out() -> None:
    store = CassandraStore(CassandraOptions(keyspace="ks"))
    session = _SilentSession()
    store._session = session  # never connects: the requests go nowhere
    view = driver_view()
    rows = EncodedRows(["k1", "k2"], np.array([1000, 1000], dtype=np.int64), np.array([NULL_MS, NULL_MS]),
                       {f.name: [b"", b""] for f in view.features})
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"not done within 0\.3s"):
        store.write(view, rows, budget_s=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert session.sent == 2


def test_driver_errors_are_classified_by_their_type() -> None:
    from cassandra import (
        AuthenticationFailed,
        ConsistencyLevel,
        InvalidRequest,
        OperationTimedOut,
        Unauthorized,
        Unavailable,
        WriteTimeout,
        WriteType,
    )
    from cassandra.cluster import NoHostAvailable
    from cassandra.protocol import ConfigurationException, SyntaxException

    from consumer.cassandra.errors import Failure, classify

    cas_timeout = WriteTimeout("timed out during Paxos", consistency=ConsistencyLevel.SERIAL, required_responses=2,
                               received_responses=1, write_type=WriteType.CAS)
    for error in (cas_timeout, OperationTimedOut("client gave up"), NoHostAvailable("none", {}),
                  Unavailable("not enough replicas", ConsistencyLevel.QUORUM, 2, 1), RuntimeError("anything else")):
        assert classify(error) is Failure.RETRY, error
    # The words of a message decide nothing: an InvalidRequest that reads like a missing table is one row's.
    assert classify(InvalidRequest("unconfigured table feast_demo_driver_hourly_stats")) is Failure.ROW
    for error in (Unauthorized("no"), AuthenticationFailed("no"), SyntaxException(0x2000, "bad", None),
                  ConfigurationException(0x2300, "bad", None)):
        assert classify(error) is Failure.FATAL, error


def test_connect_routes_token_aware_with_replicas_shuffled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request sent again after a timeout may go to another replica: one hung node must not hold every
    write of the entities it is the first replica for."""
    import cassandra.cluster
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    from consumer.cassandra.connection import connect

    made: list[dict[str, Any]] = []

    class FakeCluster:
        def __init__(self, hosts: list[str], **kwargs: Any) -> None:
            made.append(kwargs)

        def connect(self) -> str:
            return "session"

    monkeypatch.setattr(cassandra.cluster, "Cluster", FakeCluster)
    _cluster, session = connect(CassandraOptions(hosts=("10.0.0.1",), local_dc="dc1"))
    assert session == "session"
    policy = made[0]["execution_profiles"][cassandra.cluster.EXEC_PROFILE_DEFAULT].load_balancing_policy
    assert isinstance(policy, TokenAwarePolicy) and policy.shuffle_replicas is True
    assert isinstance(policy._child_policy, DCAwareRoundRobinPolicy) and policy._child_policy.local_dc == "dc1"
