"""The watchdog's decisions: when a consumer client counts as stuck outside its group, and what then."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from consumer.core.errors import KafkaClientStuck
from consumer.kafka import source as source_module
from consumer.kafka import watchdog
from consumer.kafka.source import KafkaSource
from consumer.kafka.watchdog import GroupWatch, group_state


def statistics(state: str | None) -> str:
    """A statistics report shaped as librdkafka's (only what is read here, and some of the rest)."""
    report: dict[str, Any] = {"name": "rdkafka#consumer-1", "type": "consumer", "ts": 1,
                              "brokers": {"GroupCoordinator": {"source": "logical", "state": "INIT"}}}
    if state is not None:
        report["cgrp"] = {"state": state, "stateage": 12, "join_state": "steady", "assignment_size": 4}
    return json.dumps(report)


def test_group_state_is_read_from_a_statistics_report() -> None:
    assert group_state(statistics("up")) == "up"
    assert group_state(statistics("query-coord")) == "query-coord"
    assert group_state(statistics(None)) is None
    assert group_state("not json") is None
    assert group_state("[1, 2]") is None


# Whole seconds: sums of them are exact, so "a whole period" is exact too.
@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["up", "query-coord", "wait-coord", None])),
                max_size=30),
       st.integers(15, 120), st.integers(0, 2000))
def test_due_exactly_when_the_group_was_last_up_a_whole_period_ago(
        reports: list[tuple[int, str | None]], period: int, extra: int) -> None:
    watch = GroupWatch(period, 0.0)
    now = 0.0
    last_up = 0.0
    for step, state in reports:
        now += step
        watch.observed(now, state)
        if state == "up":
            last_up = now
    assert watch.due(now + extra) == (now + extra - last_up >= period)


def test_replaced_only_on_a_second_answer_confirm_s_later_with_the_group_still_not_up() -> None:
    watch = GroupWatch(60, 0.0, confirm_s=20)
    assert not watch.due(59) and watch.due(60)
    assert not watch.answered(60, answers=True)  # first answer: wait confirm_s more
    assert not watch.due(79) and watch.due(80)
    assert watch.answered(80, answers=True)  # second answer: replace
    assert not watch.due(139) and watch.due(140)  # and a new period from there

    watch = GroupWatch(60, 0.0, confirm_s=20)
    assert not watch.answered(60, answers=True)
    watch.observed(70, "up")  # back by itself in between: nothing to do
    assert not watch.due(129) and watch.due(130)
    assert not watch.answered(130, answers=True)  # a fresh first answer, not a second one

    watch = GroupWatch(60, 0.0, confirm_s=20)
    assert not watch.answered(60, answers=False)  # the cluster is down for everyone: a whole new period
    assert not watch.due(119) and watch.due(120)
    assert not watch.answered(120, answers=True)


class Listener:
    def __init__(self) -> None:
        self.lost: list[list[tuple[str, int]]] = []

    def on_assign(self, partitions: list[tuple[str, int]]) -> None: ...
    def on_revoke(self, partitions: list[tuple[str, int]]) -> None: ...
    def on_commit_failed(self, partitions: list[tuple[str, int]], reason: str) -> None: ...

    def on_lost(self, partitions: list[tuple[str, int]]) -> None:
        self.lost.append(partitions)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nowhere() -> dict[str, Any]:
    """A client configuration whose broker is never reached: nothing here needs one."""
    return {"bootstrap.servers": "127.0.0.1:9", "group.id": "g", "enable.auto.commit": False,
            "reconnect.backoff.ms": 10_000, "log_level": 0}


def watched(monkeypatch: pytest.MonkeyPatch, nowhere: dict[str, Any], answers: list[bool]
            ) -> tuple[KafkaSource, Clock, Listener, list[str]]:
    asked: list[str] = []

    def cluster_answers(config: Any, group_id: str, timeout_s: float) -> bool:
        asked.append(group_id)
        return answers.pop(0)

    monkeypatch.setattr(source_module, "cluster_answers", cluster_answers)
    clock, listener = Clock(), Listener()
    source = KafkaSource(nowhere, ["t"], listener, probe_config={"bootstrap.servers": "x"}, rejoin_after_s=60,
                         clock=clock)
    return source, clock, listener, asked


def test_a_client_outside_its_group_is_replaced_when_the_cluster_answers_twice(
        monkeypatch: pytest.MonkeyPatch, nowhere: dict[str, Any]) -> None:
    source, clock, listener, asked = watched(monkeypatch, nowhere, [True, True])
    held = [("t", 0), ("t", 1)]
    monkeypatch.setattr(source, "assignment", lambda: set(held))
    try:
        first = source._consumer
        source._on_statistics(statistics("up"))
        clock.now += 59
        source._on_statistics(statistics("query-coord"))
        assert source.poll(10, 0) == [] and asked == []
        clock.now += 1
        source.poll(10, 0)
        assert asked == ["g"] and source._consumer is first  # answered once: given confirm_s more
        clock.now += 19
        source.poll(10, 0)
        assert asked == ["g"]
        clock.now += 1
        assert source.poll(10, 0) == []  # nothing read from either client on the turn that replaces
        assert asked == ["g", "g"] and source._consumer is not first
        assert listener.lost == [held]
        assert source.closing is not None
        source.closing.join(10)
        assert not source.closing.is_alive()
    finally:
        source.close()


def test_a_client_is_left_alone_while_the_cluster_does_not_answer(
        monkeypatch: pytest.MonkeyPatch, nowhere: dict[str, Any]) -> None:
    source, clock, listener, asked = watched(monkeypatch, nowhere, [False, False])
    try:
        first = source._consumer
        clock.now += 60
        source.poll(10, 0)
        clock.now += 59
        source.poll(10, 0)
        assert asked == ["g"]
        clock.now += 1
        source.poll(10, 0)
        assert asked == ["g", "g"] and source._consumer is first and listener.lost == []
    finally:
        source.close()


def test_a_second_stuck_client_while_the_first_has_not_closed_stops_the_process(
        monkeypatch: pytest.MonkeyPatch, nowhere: dict[str, Any]) -> None:
    source = KafkaSource(nowhere, ["t"], Listener())
    never = threading.Event()
    source.closing = threading.Thread(target=never.wait, daemon=True)  # a close that hangs
    source.closing.start()
    try:
        with pytest.raises(KafkaClientStuck, match="stopping for a fresh start"):
            source.replace()
        source.close()  # returns at once: the clients are left to the process's end
    finally:
        never.set()


def test_callbacks_of_a_replaced_client_are_not_served(monkeypatch: pytest.MonkeyPatch,
                                                       nowhere: dict[str, Any]) -> None:
    source = KafkaSource(nowhere, ["t"], Listener())
    try:
        served: list[int] = []
        of_first = source._current(served.append)
        of_first(1)
        source.replace()
        of_first(2)
        source._current(served.append)(3)
        assert served == [1, 3]
    finally:
        source.close()


def test_rejoin_after_s_leaves_room_for_several_statistics_reports() -> None:
    from consumer.config.sections import KafkaSettings

    assert KafkaSettings().rejoin_after_s == 60
    with pytest.raises(ValidationError, match="rejoin_after_s"):
        KafkaSettings(rejoin_after_s=5)


class _Future:
    def __init__(self, outcome: BaseException | None) -> None:
        self.outcome = outcome

    def result(self, timeout: float) -> object:
        if self.outcome is not None:
            raise self.outcome
        return object()


@pytest.mark.parametrize(("outcome", "answers"), [
    (None, True),
    (KafkaException(KafkaError(KafkaError.GROUP_ID_NOT_FOUND)), True),  # the coordinator answered
    (KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)), True),
    (KafkaException(KafkaError(KafkaError._TIMED_OUT)), False),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), False),
    (KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)), False),
    (KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)), False),
    (TimeoutError(), False),
])
def test_only_an_answer_of_the_groups_coordinator_counts_as_the_cluster_answering(
        monkeypatch: pytest.MonkeyPatch, outcome: BaseException | None, answers: bool) -> None:
    class Admin:
        def __init__(self, config: dict[str, Any]) -> None: ...

        def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, _Future]:
            return {groups[0]: _Future(outcome)}

    monkeypatch.setattr(watchdog, "AdminClient", Admin)
    assert watchdog.cluster_answers({}, "g", 1.0) is answers


def test_a_stuck_kafka_client_ends_the_process_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer import cli

    def run(args: Any) -> int:
        raise KafkaClientStuck("stuck again")

    exits: list[int] = []

    def exit_now(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", exit_now)
    monkeypatch.setattr(cli.faulthandler, "register", lambda *a, **k: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # pytest's own handlers stay
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: SimpleNamespace(fn=run, log_level="INFO"))
    with pytest.raises(SystemExit):
        cli.main([])
    assert exits == [1]
