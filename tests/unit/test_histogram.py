"""The batch histogram exposes what prometheus_client's own histogram would, for the same values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from consumer.observe.histogram import BatchHistogram
from consumer.observe.metrics import FRESHNESS_BUCKETS, WAIT_BUCKETS

values = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}


@given(st.lists(st.lists(values, max_size=40), max_size=6), st.sampled_from([FRESHNESS_BUCKETS, WAIT_BUCKETS]))
def test_same_series_as_prometheus_clients_histogram(batches: list[list[float]], buckets: tuple[float, ...]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "doc", ["view"], buckets=buckets, registry=theirs)
    batched = BatchHistogram("h_seconds", "doc", ["view"], buckets, ours)
    for i, batch in enumerate(batches):
        view = "ab"[i % 2]
        series = reference.labels(view)  # a series exists once named, observed or not
        for v in batch:
            series.observe(v)
        batched.labels(view).observe(batch)
    expected, got = samples(theirs), samples(ours)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9), key


def test_values_on_a_bound_fall_in_its_bucket_negative_ones_count_as_zero_and_nan_is_left_out() -> None:
    registry = CollectorRegistry()
    h = BatchHistogram("w_seconds", "doc", ["view"], (0.001, 0.005), registry)
    h.labels("v").observe([0.001, 0.005, -2.0, 0.0051, float("nan")])
    bucket = {s.labels["le"]: s.value for m in registry.collect() for s in m.samples if s.name == "w_seconds_bucket"}
    assert bucket == {"0.001": 2.0, "0.005": 3.0, "+Inf": 4.0}
    assert registry.get_sample_value("w_seconds_count", {"view": "v"}) == 4
    assert registry.get_sample_value("w_seconds_sum", {"view": "v"}) == pytest.approx(0.0111)
    with pytest.raises(ValueError, match="labels"):
        h.labels("v", "extra")
    assert h.labels(3) is h.labels("3")
    with pytest.raises(ValueError, match="no buckets"):
        BatchHistogram("e_seconds", "doc", ["view"], (), registry)
