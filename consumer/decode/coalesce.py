"""Coalescing: of the rows of one view in a batch, only the newest per entity is written.

Newest means: greater event timestamp (at the store's millisecond resolution); on a tie, greater
created timestamp (a missing one is the oldest); on a further tie, the later record in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pandas as pd

from consumer.core.dtypes import Kind
from consumer.core.store import EncodedRows
from consumer.core.views import FeatureView
from consumer.decode.mapping import Part
from consumer.feast import frame as rowmod
from consumer.feast.frame import Column


@dataclass
class ViewBatch:
    view: FeatureView
    columns: dict[str, Column]  # the coalesced push frame's columns
    rows: EncodedRows  # aligned with columns
    positions: npt.NDArray[np.int64]  # per row: the position in the batch of the record it came from
    records: int  # rows before coalescing
    superseded: int  # rows dropped because a newer record for the same entity was in the batch

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The coalesced push frame, as Feast's `push` takes it (built when asked for: the writer needs none)."""
        return pd.DataFrame({name: column.series() for name, column in self.columns.items()})


def newest_per_key(
    codes: npt.NDArray[np.int64],
    event_ms: npt.NDArray[np.int64],
    created_ms: npt.NDArray[np.int64],
    positions: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Indices of the newest row per key code, in arrival order.

    Newest: greatest (event_ms, created_ms, position), compared in that order.
    """
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((positions, created_ms, event_ms, codes))
    sorted_codes = codes[order]
    last = np.ones(order.size, dtype=np.bool_)
    last[:-1] = sorted_codes[1:] != sorted_codes[:-1]
    return np.sort(order[last])


# Not UnixTimestamp: its frame column holds microseconds, but Feast keys it by whole seconds, so two
# values a fraction of a second apart are one entity.
_INT_KEY_KINDS = (Kind.INT64, Kind.INT32)


def coalesce(view: FeatureView, parts: list[Part]) -> ViewBatch:
    if len(parts) == 1:
        part = parts[0]
        columns = part.columns
        event_ms, created_ms, positions = part.event_ms, part.created_ms, part.positions
    else:
        event_ms = np.concatenate([p.event_ms for p in parts])
        created_ms = np.concatenate([p.created_ms for p in parts])
        positions = np.concatenate([p.positions for p in parts])
        order = np.argsort(positions, kind="stable")
        columns = {name: Column.concat([p.columns[name] for p in parts]).take(order) for name in parts[0].columns}
        event_ms, created_ms, positions = event_ms[order], created_ms[order], positions[order]
    join_keys = view.join_keys
    if len(join_keys) == 1 and join_keys[0][1].kind in _INT_KEY_KINDS:
        # One integer key: it tells entities apart by itself; hex keys are built for the winners only.
        codes = np.asarray(columns[join_keys[0][0]].values, dtype=np.int64)
        keys = None
    else:
        keys = rowmod.entity_keys_of(view, columns)
        codes = pd.factorize(np.asarray(keys, dtype=object))[0].astype(np.int64)
    winners = newest_per_key(codes, event_ms, created_ms, positions)
    if winners.size != len(positions):
        columns = {name: column.take(winners) for name, column in columns.items()}
        keys = None if keys is None else [keys[i] for i in winners.tolist()]
        event_ms, created_ms = event_ms[winners], created_ms[winners]
    encoded = rowmod.encode_columns(view, columns, keys, event_ms, created_ms)
    return ViewBatch(view, columns, encoded, positions[winners], records=len(positions),
                     superseded=len(positions) - len(winners))
