"""The loop's pure decisions: when records go to the writer, and the backoff after failures."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.policy import Backoff, BatchPolicy

policies = st.builds(BatchPolicy, st.integers(1, 50), st.integers(1, 1000), st.integers(1, 10_000), st.integers(1, 4))


# (records in the batches in flight, rows pending in the writer, its window)
loads = st.tuples(st.integers(0, 12_000), st.integers(0, 12_000), st.integers(0, 128))


@settings(deadline=None)
@given(policies, st.integers(0, 100), st.integers(0, 20_000), st.integers(0, 5000), st.integers(0, 5000),
       st.integers(0, 4), loads)
def test_records_go_at_once_while_the_writer_has_room_and_gather_while_it_is_full(
    policy: BatchPolicy, buffered: int, buffered_bytes: int, age_ms: int, now_ms: int, in_flight: int,
    load: tuple[int, int]
) -> None:
    held, pending, window = load
    due = policy.send_now(now_ms, now_ms - age_ms if buffered else None, buffered, buffered_bytes, in_flight,
                          held, pending, window)
    full = buffered >= policy.max_records or buffered_bytes >= policy.max_bytes
    old = age_ms >= policy.max_wait_ms
    if buffered == 0 or in_flight >= policy.max_in_flight:
        assert not due  # nothing to send, or no room in flight
    elif in_flight and held > policy.max_records:
        assert not due  # more than a batch's worth in flight already: memory stays bounded
    elif in_flight == 0 or pending < window:
        assert due  # a writer with room never waits for a batch to fill
    else:
        assert due == (full or old)


@settings(deadline=None)
@given(policies, st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 4), loads)
def test_the_wait_never_outlasts_the_oldest_records_deadline(policy: BatchPolicy, now: int, age: int,
                                                             in_flight: int, load: tuple[int, int]) -> None:
    held, pending, window = load
    assert policy.wait_ms(now, None, in_flight, held, pending, window) is None
    wait = policy.wait_ms(now, now - age, in_flight, held, pending, window)
    if in_flight >= policy.max_in_flight or (in_flight and held > policy.max_records):
        assert wait is None  # only an outcome can make room
    else:
        assert wait is not None and 0 <= wait <= policy.max_wait_ms
        assert policy.send_now(now + wait, now - age, 1, 0, in_flight, held, pending, window)


@settings(deadline=None)
@given(st.integers(1, 1000), st.integers(1, 100_000), st.integers(1, 200))
def test_backoff_grows_and_stays_within_its_bounds(min_ms: int, max_ms: int, failures: int) -> None:
    backoff = Backoff(min_ms, max(min_ms, max_ms))
    delay = backoff.delay_ms(failures)
    assert min(min_ms, backoff.max_ms) <= delay <= backoff.max_ms
    assert backoff.delay_ms(failures + 1) >= delay
    assert backoff.delay_ms(0) == 0
