"""The loop's pure decisions: when a batch is complete, what it takes, and the backoff after failures."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.core.policy import Backoff, BatchPolicy

policies = st.builds(BatchPolicy, st.integers(1, 50), st.integers(1, 1000), st.integers(1, 10_000))


@given(policies, st.lists(st.integers(0, 5000), max_size=80))
def test_a_batch_takes_a_prefix_within_both_bounds(policy: BatchPolicy, sizes: list[int]) -> None:
    n = policy.batch_length(sizes)
    if not sizes:
        assert n == 0
        return
    assert 1 <= n <= min(len(sizes), policy.max_records)
    # Within the byte bound, unless one message alone is larger than it.
    assert sum(sizes[:n]) <= policy.max_bytes or n == 1
    # And as long as it can be: one more message would break a bound.
    if n < len(sizes):
        assert n == policy.max_records or sum(sizes[: n + 1]) > policy.max_bytes


@given(policies, st.integers(0, 100), st.integers(0, 20_000), st.integers(0, 5000), st.integers(0, 5000))
def test_a_batch_is_due_when_full_by_count_or_bytes_or_old_enough(
    policy: BatchPolicy, buffered: int, buffered_bytes: int, age_ms: int, now_ms: int
) -> None:
    due = policy.should_flush(now_ms, now_ms - age_ms, buffered, buffered_bytes)
    full = buffered >= policy.max_records or buffered_bytes >= policy.max_bytes
    old = buffered > 0 and age_ms >= policy.max_wait_ms
    assert due == (full or old)
    # Nothing is taken into a batch that is already full.
    assert (policy.room(buffered, buffered_bytes) == 0) == full


@given(policies, st.integers(0, 5000))
def test_an_empty_buffer_is_never_due_and_polls_wait_at_most_the_batch_wait(policy: BatchPolicy, now: int) -> None:
    assert not policy.should_flush(now, None, 0)
    assert 0 <= policy.poll_timeout_ms(now, None) <= policy.max_wait_ms
    assert policy.poll_timeout_ms(now, now - policy.max_wait_ms) == 0


@given(st.integers(1, 1000), st.integers(1, 100_000), st.integers(1, 200))
def test_backoff_grows_and_stays_within_its_bounds(min_ms: int, max_ms: int, failures: int) -> None:
    backoff = Backoff(min_ms, max(min_ms, max_ms))
    delay = backoff.delay_ms(failures)
    assert min(min_ms, backoff.max_ms) <= delay <= backoff.max_ms
    assert backoff.delay_ms(failures + 1) >= delay
    assert backoff.delay_ms(0) == 0
