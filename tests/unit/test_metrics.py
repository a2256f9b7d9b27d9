"""Metric semantics with a fake clock: lag in offsets and seconds, revokes, health and readiness."""

from __future__ import annotations

import numpy as np

from consumer.core.store import EncodedRows, RowStatus, WriteReport
from consumer.decode.coalesce import ViewBatch
from consumer.observe.metrics import Metrics
from tests.helpers import FakeMessage, driver_view, wait_for

TP0 = ("t", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedMessage(FakeMessage):
    def __init__(self, partition: int, offset: int, ts_s: float) -> None:
        super().__init__("t", partition, offset, b"")
        self.ts_ms = int(ts_s * 1000)

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts_ms)


def sample(m: Metrics, name: str, tp: tuple[str, int] = TP0) -> float | None:
    return m.registry.get_sample_value(name, {"topic": tp[0], "partition": str(tp[1])})


def make() -> tuple[Metrics, Clock]:
    clock = Clock()
    m = Metrics(clock=clock, views_by_topic={"t": ["driver_hourly_stats"]})
    m.assigned([TP0])
    return m, clock


def test_lag_is_log_end_minus_committed_and_zero_seconds_when_caught_up() -> None:
    m, clock = make()
    m.committed({TP0: 10}, clock.now)
    m.update_log_end({TP0: 25})
    assert sample(m, "feature_consumer_lag_offsets") == 15
    m.committed({TP0: 25}, clock.now)
    clock.now += 3600
    m.refresh()
    assert sample(m, "feature_consumer_lag_offsets") == 0
    assert sample(m, "feature_consumer_lag_seconds") == 0  # idle and caught up: 0, however long


def test_lag_seconds_is_the_age_of_the_oldest_uncommitted_record_and_grows_while_stuck() -> None:
    m, clock = make()
    m.committed({TP0: 0}, clock.now)
    m.update_log_end({TP0: 0})
    clock.now = 2000.0
    m.received([TimedMessage(0, 0, 1990.0), TimedMessage(0, 1, 1995.0)])
    m.update_log_end({TP0: 2})
    assert sample(m, "feature_consumer_lag_seconds") == 10
    clock.now = 2100.0
    m.refresh()
    assert sample(m, "feature_consumer_lag_seconds") == 110  # stuck: grows with wall time
    m.committed({TP0: 2}, clock.now)
    assert sample(m, "feature_consumer_lag_seconds") == 0


def test_during_a_backlog_lag_is_the_age_of_the_first_record_after_the_commit() -> None:
    m, clock = make()
    m.committed({TP0: 0}, clock.now)
    m.update_log_end({TP0: 0})  # the brokers' last answer: nothing there yet (it is up to 5 s old)
    clock.now = 2000.0
    m.received([TimedMessage(0, i, 1990.0 + i) for i in range(4)])  # read, buffered, not yet committed
    m.committed({TP0: 2}, clock.now)
    assert sample(m, "feature_consumer_lag_offsets") == 2  # not 0: two records read are not committed
    assert sample(m, "feature_consumer_lag_seconds") == 8  # the record at offset 2 is from t=1992
    m.committed({TP0: 4}, clock.now)
    assert (sample(m, "feature_consumer_lag_offsets"), sample(m, "feature_consumer_lag_seconds")) == (0, 0)


def test_a_position_that_goes_back_does_not_leave_records_pending_for_ever() -> None:
    m, clock = make()
    m.committed({TP0: 100}, clock.now)
    m.received([TimedMessage(0, i, 1000.0) for i in range(100, 110)])
    m.received([TimedMessage(0, i, 1001.0) for i in range(0, 50)])  # reset to the earliest offset
    m.committed({TP0: 50}, clock.now)
    assert len(m.pending[TP0]) == 0


def test_before_the_record_is_read_lag_counts_from_the_last_catch_up() -> None:
    m, clock = make()
    m.committed({TP0: 5}, clock.now)
    m.update_log_end({TP0: 5})  # caught up at t=1000
    clock.now = 1030.0
    m.update_log_end({TP0: 9})  # four records arrived, none read yet
    assert sample(m, "feature_consumer_lag_seconds") == 30


def test_a_revoked_partition_is_no_longer_reported() -> None:
    m, clock = make()
    m.committed({TP0: 1}, clock.now)
    m.update_log_end({TP0: 3})
    assert sample(m, "feature_consumer_lag_offsets") == 2
    m.revoked([TP0], lost=False)
    assert sample(m, "feature_consumer_lag_offsets") is None
    assert sample(m, "feature_consumer_committed_offset") is None
    m.update_log_end({TP0: 9})  # a late collection for a partition no longer owned is ignored
    assert sample(m, "feature_consumer_lag_offsets") is None
    assert m.registry.get_sample_value("feature_consumer_assigned_partitions") == 0
    assert m.registry.get_sample_value("feature_consumer_rebalances_total", {"kind": "revoke"}) == 1


def test_written_rows_feed_the_counters_and_the_freshness_histogram() -> None:
    m, _ = make()
    view = driver_view()
    rows = EncodedRows(["a", "b", "c"], np.array([990_000, 995_000, 1_000], dtype=np.int64),
                       np.zeros(3, dtype=np.int64), {f.name: [b""] * 3 for f in view.features})
    vb = ViewBatch(view, None, rows, np.arange(3), records=4, superseded=1)  # type: ignore[arg-type]
    report = WriteReport([RowStatus.APPLIED, RowStatus.PARTIAL, RowStatus.STALE], not_applied=2,
                         latencies=[0.004, 0.006], sent_at=[5.0, 5.5, None], done_at=[1000.0, 1000.0, 1000.0])
    m.view_written(vb, report, waits=[0.002, 0.003])
    labels = {"view": "driver_hourly_stats"}
    assert m.registry.get_sample_value("feature_consumer_records_written_total", labels) == 2
    assert m.registry.get_sample_value("feature_consumer_records_stale_total", labels) == 1
    assert m.registry.get_sample_value("feature_consumer_conditional_writes_not_applied_total", labels) == 2
    assert m.registry.get_sample_value("feature_consumer_write_latency_seconds_count", labels) == 2
    assert m.registry.get_sample_value("feature_consumer_event_to_online_seconds_count", labels) == 2
    assert m.registry.get_sample_value("feature_consumer_event_to_online_seconds_sum", labels) == 15.0
    assert m.registry.get_sample_value("feature_consumer_record_wait_seconds_count", labels) == 2
    assert m.registry.get_sample_value("feature_consumer_record_wait_seconds_sum", labels) == 0.005
    # Milliseconds are told apart: both rows below 10 ms of wait, none below 1 ms.
    assert m.registry.get_sample_value("feature_consumer_record_wait_seconds_bucket", {**labels, "le": "0.001"}) == 0
    assert m.registry.get_sample_value("feature_consumer_record_wait_seconds_bucket", {**labels, "le": "0.005"}) == 2


def test_health_and_readiness() -> None:
    m = Metrics(clock=Clock())
    assert not m.ready()
    m.assigned([])
    assert not m.ready()  # Cassandra not known to answer yet
    m.store_answers = True
    assert m.ready()
    m.loop_turned(m.clock())
    assert m.healthy(stuck_after_s=5)
    m.clock.now += 6  # type: ignore[attr-defined]
    assert not m.healthy(stuck_after_s=5)


def test_no_lag_figure_before_the_brokers_gave_the_log_end() -> None:
    """Records read so far are not the log end: before the collector's first answer there is no figure."""
    m, _ = make()
    m.seed_committed({TP0: 10})
    m.received([TimedMessage(0, o, 999.0) for o in range(10, 15)])
    m.refresh()
    assert sample(m, "feature_consumer_lag_offsets") is None
    m.update_log_end({TP0: 5000})
    assert sample(m, "feature_consumer_lag_offsets") == 4990


def test_lag_is_collected_while_cassandra_hangs() -> None:
    """The lag collector and the Cassandra probe are separate threads: a ping that hangs for its whole
    request timeout does not hold up the log end offsets."""
    import threading

    from consumer.observe.health import StoreProbe
    from consumer.observe.lag import LagCollector

    m, _ = make()
    m.seed_committed({TP0: 0})
    hang = threading.Event()
    ends = iter(range(100, 10_000, 100))

    class Offsets:
        def log_ends(self, partitions: object, timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
            return {TP0: next(ends)}

        def start_offsets(self, partitions: object, reset: object,
                          timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
            return {}

        def close(self) -> None:
            pass

    collector = LagCollector(m, Offsets(), "earliest", interval_s=0.05)
    probe = StoreProbe(m, lambda: hang.wait(10), interval_s=0.05)
    probe.start()
    collector.start()
    try:
        # Five collections, all while the first ping still hangs (it would for 10 s).
        wait_for(lambda: (sample(m, "feature_consumer_log_end_offset") or 0) >= 500, timeout_s=8,
                 what="log end offsets collected while the ping hangs")
        assert not hang.is_set() and probe.is_alive()
    finally:
        hang.set()
        collector.stop()
        probe.stop()
