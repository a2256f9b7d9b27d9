"""Guarded materialization: a Feast repo's offline rows into the online store through the stream's guard.

`feature-consumer materialize --feast-repo REPO START END` and `materialize-incremental --feast-repo REPO
END` do what `feast materialize` and `feast materialize-incremental` do for the views this daemon writes,
except that rows are written the way the stream writes them: the same mapping checks, coalescing, Feast
encodings and lightweight-transaction guard (backfill.write_chunk). So a materialization never overwrites
a newer streamed value, and the stream never loses to an older materialized one, whichever runs first.

View by view: the window's rows come from the offline store (feast/offline.py) in chunks of a bounded
number of rows, with progress lines; when every row has an outcome, the interval is recorded in the
registry as Feast records it. A view that fails (the offline store, a missing table, Cassandra
unreachable, a stop asked for) records nothing; running the same command again is safe, since the guard
makes writing the same rows twice harmless.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TextIO

import numpy as np

from consumer.backfill import Progress, Summary, write_chunk
from consumer.core.errors import StoreUnavailable
from consumer.core.policy import Limits
from consumer.core.redact import describe_error
from consumer.core.store import Store
from consumer.core.views import FeatureView
from consumer.feast.offline import OfflineRows


class Offline(Protocol):
    """A Feast repo's offline side (feast/offline.FeastOffline; tests have a stand-in)."""

    def incremental_start(self, name: str, now: datetime) -> datetime: ...

    def read(self, view: FeatureView, start: datetime, end: datetime, chunk_rows: int) -> OfflineRows: ...

    def record(self, name: str, start: datetime, end: datetime) -> None: ...


class Stopped(Exception):
    """A stop was asked for (SIGTERM, SIGINT) while a view was being materialized."""


@dataclass
class ViewRun:
    """What became of one view."""

    view: str
    start: datetime | None
    end: datetime
    summary: Summary = field(default_factory=lambda: Summary(within="the offline rows"))
    error: str | None = None
    recorded: bool = False
    note: str | None = None  # why nothing was done

    @property
    def ok(self) -> bool:
        return self.error is None and self.summary.rejected == 0

    def render(self) -> str:
        lines = [f"{self.view}: {self.note or self.summary.render()}"]
        window = f"{_iso(self.start)} to {_iso(self.end)}" if self.start is not None else f"up to {_iso(self.end)}"
        if self.error is not None:
            lines.append(f"  FAILED: {self.error}")
            lines.append(f"  {window}: not recorded; running the command again is safe")
        elif self.recorded:
            lines.append(f"  {window}: recorded in the registry")
        return "\n".join(lines)


def _iso(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def materialize(views: list[FeatureView], offline: Offline, store: Store, limits: Limits, end: datetime,
                start: datetime | None = None, chunk_size: int = 2000, clock: Callable[[], float] = time.time,
                progress: TextIO | None = sys.stderr, progress_every_s: float = 5.0,
                stop: threading.Event | None = None) -> list[ViewRun]:
    """Materialize each view over [start, end], or incrementally up to `end` when `start` is None.

    A view that fails is reported with its error and the next view is tried, except when Cassandra is
    unreachable or a stop is asked for: then the views not begun are reported as not run.
    """
    runs: list[ViewRun] = []
    now = datetime.fromtimestamp(clock(), UTC)
    for index, view in enumerate(views):
        run = ViewRun(view.name, start, end)
        runs.append(run)
        try:
            if stop is not None and stop.is_set():
                raise Stopped("stopped before it began")
            if start is None:
                run.start = offline.incremental_start(view.name, now)
                if run.start >= end:
                    run.note = f"materialized up to {_iso(run.start)} already; nothing to do"
                    continue
            assert run.start is not None
            _materialize_view(view, offline, store, limits, run.start, end, run.summary, chunk_size, clock,
                              progress, progress_every_s, stop)
            offline.record(view.name, run.start, end)
            run.recorded = True
        except (StoreUnavailable, Stopped) as exc:
            run.error = str(exc)
            for rest in views[index + 1:]:
                runs.append(ViewRun(rest.name, start, end, error=f"not run: the run ended at {view.name}"))
            break
        except Exception as exc:  # noqa: BLE001 - the view failed; what failed is reported, the next view tried
            run.error = describe_error(exc)
    return runs


def _materialize_view(view: FeatureView, offline: Offline, store: Store, limits: Limits, start: datetime,
                      end: datetime, summary: Summary, chunk_size: int, clock: Callable[[], float],
                      progress: TextIO | None, progress_every_s: float, stop: threading.Event | None) -> None:
    rows = offline.read(view, start, end, chunk_size)
    meter = Progress(f"materialize {view.name}", rows.total, progress, progress_every_s, clock)
    for frame in rows.frames:
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped after {summary.read} rows")
        numbers = np.arange(summary.read, summary.read + len(frame))
        write_chunk(view, frame, store, limits, summary, numbers, int(clock() * 1000))
        meter.update(summary.read)
    meter.update(summary.read, final=True)
