"""Feast push frames and the rows the online store receives.

A push frame is the DataFrame Feast's `push` / `write_to_online_store` takes for a view: one column
per join key, the event timestamp, the created timestamp (if the view has one) and one column per
feature. `encode_frame` turns such a frame into what is written: hex entity keys, serialized Feast
values and millisecond timestamps. The stream path and the backfill path both go through it.

Timestamps are kept at millisecond resolution, the resolution of Cassandra's `timestamp` type: the
guard compares what Cassandra stores, so two events in the same millisecond are a tie everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from consumer.core.dtypes import Dtype, Kind
from consumer.core.guard import NULL_MS
from consumer.core.store import EncodedRows
from consumer.core.views import FeatureView
from consumer.feast import keys as feast_keys
from consumer.feast import values as feast_values

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------- columns -> frame


def micros_to_series(micros: Int64Array, nulls: BoolArray | None = None) -> pd.Series:
    """int64 microseconds since the epoch -> a UTC datetime column (NaT where null)."""
    arr = np.asarray(micros, dtype=np.int64).astype("datetime64[us]")
    if nulls is not None and nulls.any():
        arr = arr.copy()
        arr[nulls] = np.datetime64("NaT")
    return pd.Series(pd.DatetimeIndex(arr).tz_localize("UTC"))


def feature_series(dtype: Dtype, values: Any, nulls: BoolArray | None = None) -> pd.Series:
    """One push-frame column from decoded values (numpy for numbers, lists otherwise)."""
    if dtype.is_list or dtype.kind in (Kind.STRING, Kind.BYTES):
        return pd.Series(values, dtype=object)
    if dtype.kind is Kind.UNIX_TIMESTAMP:
        return micros_to_series(values, nulls)
    if dtype.kind in (Kind.FLOAT32, Kind.FLOAT64):
        arr = np.asarray(values, dtype=np.float32 if dtype.kind is Kind.FLOAT32 else np.float64)
        if nulls is not None and nulls.any():
            arr = arr.copy()
            arr[nulls] = np.nan
        return pd.Series(arr)
    if dtype.kind is Kind.BOOL:
        arr_b = np.asarray(values, dtype=np.bool_)
        if nulls is not None and nulls.any():
            return pd.Series(pd.arrays.BooleanArray(arr_b, np.asarray(nulls, np.bool_)))
        return pd.Series(arr_b)
    arr_i: npt.NDArray[np.signedinteger[Any]] = np.asarray(
        values, dtype=np.int32 if dtype.kind is Kind.INT32 else np.int64
    )
    if nulls is not None and nulls.any():
        return pd.Series(pd.arrays.IntegerArray(arr_i, np.asarray(nulls, np.bool_)))
    return pd.Series(arr_i)


@dataclass(frozen=True)
class Column:
    """One push-frame column of a batch as the decode path maps it, kept out of pandas.

    `values` and `nulls` are what `feature_series` takes. A stream micro-batch is often a handful of
    records, for which building Series and a DataFrame costs more than all the rest of its decoding:
    `codec()` gives what `column_for_codec` would give for `series()`, directly for scalar dtypes.
    """

    dtype: Dtype
    values: Any  # numpy for numbers, bools and timestamps (microseconds); a list for text and lists
    nulls: BoolArray | None = None

    def __len__(self) -> int:
        return len(self.values)

    def series(self) -> pd.Series:
        return feature_series(self.dtype, self.values, self.nulls)

    def codec(self) -> tuple[Any, BoolArray | None]:
        return codec_values(self.dtype, self.values, self.nulls)

    def take(self, index: Int64Array) -> Column:
        values = self.values[index] if isinstance(self.values, np.ndarray) else [self.values[i] for i in index.tolist()]
        return Column(self.dtype, values, None if self.nulls is None else self.nulls[index])

    @staticmethod
    def concat(columns: list[Column]) -> Column:
        first = columns[0]
        if isinstance(first.values, np.ndarray):
            values: Any = np.concatenate([c.values for c in columns])
        else:
            values = [v for c in columns for v in c.values]
        nulls = None
        if any(c.nulls is not None for c in columns):
            nulls = np.concatenate([np.zeros(len(c), np.bool_) if c.nulls is None else c.nulls for c in columns])
        return Column(first.dtype, values, nulls)


def codec_values(dtype: Dtype, values: Any, nulls: BoolArray | None = None) -> tuple[Any, BoolArray | None]:
    """`column_for_codec(dtype, feature_series(dtype, values, nulls))`, without the Series for scalars.

    Equal to it value for value (tests/unit/test_codec.py holds the two side by side); lists still go
    through the Series, whose conversions they need.
    """
    kind = dtype.kind
    if dtype.is_list:
        return column_for_codec(dtype, feature_series(dtype, values, nulls))
    if kind in (Kind.STRING, Kind.BYTES):
        return [_none_if_missing(v) for v in values], None
    some_null = nulls is not None and bool(nulls.any())
    if kind is Kind.UNIX_TIMESTAMP:
        stamps = np.asarray(values, dtype=np.int64).astype("datetime64[us]")
        if some_null:
            stamps[nulls] = np.datetime64("NaT")
        return stamps.astype("datetime64[s]").astype(np.int64), None
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        floats = np.array(values, dtype=np.float32 if kind is Kind.FLOAT32 else np.float64)
        if some_null:
            floats[nulls] = np.nan
        out = floats.astype(np.float64)
        return out, np.isnan(out)
    mask = np.array(nulls, dtype=np.bool_) if some_null else np.zeros(len(values), dtype=np.bool_)
    if kind is Kind.BOOL:
        bools = np.array(values, dtype=np.bool_)
        bools[mask] = False
        return bools, mask
    ints = np.array(values, dtype=np.int32 if kind is Kind.INT32 else np.int64).astype(np.int64)
    ints[mask] = 0
    return ints, mask


# --------------------------------------------------------------------------- frame -> encoded rows


def timestamps_us(column: pd.Series) -> tuple[Int64Array, BoolArray]:
    """A datetime column (naive means UTC, as in Feast) -> (microseconds since the epoch, null mask)."""
    series = pd.to_datetime(column, utc=True)
    nulls = series.isna().to_numpy()
    return series.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").astype(np.int64), nulls


def timestamps_ms(column: pd.Series) -> tuple[Int64Array, BoolArray]:
    """A datetime column (naive means UTC, as in Feast) -> (ms since epoch floored, null mask)."""
    micros, nulls = timestamps_us(column)
    ms = np.floor_divide(micros, 1000)
    if nulls.any():
        ms[nulls] = NULL_MS
    return ms, nulls


def _none_if_missing(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    return value


def object_values(column: pd.Series, is_list: bool) -> list[Any]:
    """A column's values as Python objects: missing ones (None, NaN, NA, NaT) None, list values lists."""
    out = [_none_if_missing(v) if not isinstance(v, (list, np.ndarray)) else v for v in column.tolist()]
    if is_list:
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in out]
    return out


def _list_timestamps_to_seconds(items: list[Any]) -> list[Any]:
    """Items of an Array(UnixTimestamp) value -> int seconds.

    Feast converts list items with `int(datetime.timestamp())`, which truncates toward zero (its scalar
    path floors); the same rule is kept here so that pre-1970 items encode alike.
    """
    out: list[Any] = []
    for item in items:
        if item is None or item is pd.NaT:
            out.append(None)  # the codec substitutes Feast's null default
        elif isinstance(item, (int, np.integer)):
            out.append(int(item))
        else:
            stamp = pd.Timestamp(item)
            if stamp.tzinfo is not None:
                stamp = stamp.tz_convert(None)
            micros = stamp.value // 1000
            seconds = abs(micros) // 1_000_000
            out.append(-seconds if micros < 0 else seconds)
    return out


def column_for_codec(dtype: Dtype, column: pd.Series) -> tuple[Any, BoolArray | None]:
    """A push-frame column as the codec takes it: numpy + null mask, or Python objects."""
    kind = dtype.kind
    if dtype.is_list:
        values = object_values(column, True)
        if kind is Kind.UNIX_TIMESTAMP:
            values = [None if v is None else _list_timestamps_to_seconds(v) for v in values]
        return values, None
    if kind in (Kind.STRING, Kind.BYTES):
        return object_values(column, False), None
    if kind is Kind.UNIX_TIMESTAMP:
        # NaT stays what Feast's push path makes of it: the int64 minimum, its null-timestamp
        # sentinel, which Feast reads back as None (not an empty Value).
        series = pd.to_datetime(column, utc=True)
        secs = series.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
        return secs.astype("datetime64[s]").astype(np.int64), None
    nulls = column.isna().to_numpy()
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), nulls
    if kind is Kind.BOOL:
        return column.to_numpy(dtype=np.bool_, na_value=False), nulls
    return column.to_numpy(dtype=np.int64, na_value=0), nulls


def key_columns(view: FeatureView, frame: pd.DataFrame) -> list[Any]:
    return [column_for_codec(dtype, frame[name])[0] for name, dtype in view.join_keys]


def _hex_keys(view: FeatureView, key_values: list[Any]) -> list[str]:
    return feast_keys.entity_key_hex(view.join_keys, key_values, view.entity_key_serialization_version)


def entity_keys(view: FeatureView, frame: pd.DataFrame) -> list[str]:
    return _hex_keys(view, key_columns(view, frame))


def entity_keys_of(view: FeatureView, columns: dict[str, Column]) -> list[str]:
    """Hex entity keys from a batch's mapped columns (as `entity_keys` from its frame)."""
    return _hex_keys(view, [columns[name].codec()[0] for name, _ in view.join_keys])


def encode_frame(
    view: FeatureView,
    frame: pd.DataFrame,
    keys: list[str] | None = None,
    event_ms: Int64Array | None = None,
    created_ms: Int64Array | None = None,
) -> EncodedRows:
    """Serialize a push frame for the online store.

    Keys and millisecond timestamps may be passed when the caller computed them already.
    """
    if event_ms is None:
        event_ms, event_nulls = timestamps_ms(frame[view.timestamp_field])
        if event_nulls.any():
            raise ValueError(f"view {view.name!r}: {int(event_nulls.sum())} rows have no event timestamp")
    if created_ms is None:
        if view.created_timestamp_field and view.created_timestamp_field in frame:
            created_ms, _ = timestamps_ms(frame[view.created_timestamp_field])
        else:
            created_ms = np.full(len(frame), NULL_MS, dtype=np.int64)
    codec = {f.name: column_for_codec(f.dtype, frame[f.name]) for f in view.features}
    return encode_codec(view, codec, keys if keys is not None else entity_keys(view, frame), event_ms, created_ms)


def encode_columns(
    view: FeatureView, columns: dict[str, Column], keys: list[str] | None, event_ms: Int64Array,
    created_ms: Int64Array,
) -> EncodedRows:
    """Serialize a batch's mapped columns for the online store (as `encode_frame` their frame)."""
    codec = {f.name: columns[f.name].codec() for f in view.features}
    return encode_codec(view, codec, keys if keys is not None else entity_keys_of(view, columns), event_ms,
                        created_ms)


def encode_codec(view: FeatureView, codec: dict[str, tuple[Any, BoolArray | None]], keys: list[str],
                 event_ms: Int64Array, created_ms: Int64Array) -> EncodedRows:
    values = {f.name: feast_values.encode_values(f.dtype, *codec[f.name]) for f in view.features}
    return EncodedRows(entity_keys=keys, event_ms=event_ms, created_ms=created_ms, values=values)
