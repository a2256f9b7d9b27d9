"""A Prometheus histogram fed a batch's values at once.

prometheus_client's `Histogram.observe` takes one value: a lock, a walk over the buckets and two counter
increments each, some 2 us a call. The loop observes three values per written row (freshness, the wait
before the write was sent, and request latency), which made them the largest single item of its own
thread's time in a profile of a backlog. Here a batch's values are counted into the buckets with numpy, under
one lock per batch. The series exposed are those of a prometheus_client histogram (`_bucket` with `le`,
`_count`, `_sum`), through the library's own collector interface.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class _Series:
    def __init__(self, bounds: npt.NDArray[np.float64], lock: threading.Lock) -> None:
        self._bounds = bounds
        self._lock = lock
        self.counts = np.zeros(len(bounds), dtype=np.int64)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
        """Count every value (negative ones as 0: a clock step back is not a negative duration)."""
        array = np.asarray(values, dtype=np.float64)
        # A NaN is no duration (prometheus_client's histogram leaves it out of the buckets too); a metric must
        # never stop the loop.
        array = np.maximum(array[~np.isnan(array)], 0.0)
        if not array.size:
            return
        # Bucket i holds values in (bound[i-1], bound[i]]: the first bound not below the value.
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._bounds))
        total = float(array.sum())
        with self._lock:
            self.counts += counts
            self.total += total


class BatchHistogram:
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Iterable[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds:
            raise ValueError(f"{name}: no buckets")
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self._bounds = np.array(bounds, dtype=np.float64)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: object) -> _Series:
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, given {list(key)}")
            with self._lock:
                series = self._series.setdefault(key, _Series(self._bounds, self._lock))
        return series

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(key, series.counts.copy(), series.total) for key, series in self._series.items()]
        for key, counts, total in snapshot:
            cumulative = np.cumsum(counts)
            buckets = [(floatToGoString(bound), float(n))  # type: ignore[no-untyped-call]
                       for bound, n in zip(self._bounds, cumulative, strict=True)]
            family.add_metric(list(key), buckets, total)
        yield family
