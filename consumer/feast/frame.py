"""Feast push frames and the rows the online store receives.

A push frame is the DataFrame Feast's `push` / `write_to_online_store` takes for a view: one column
per join key, the event timestamp, the created timestamp (if the view has one) and one column per
feature. `encode_frame` turns such a frame into what is written: hex entity keys, serialized Feast
values and millisecond timestamps. The stream path and the backfill path both go through it.

Timestamps are kept at millisecond resolution, the resolution of Cassandra's `timestamp` type: the
guard compares what Cassandra stores, so two events in the same millisecond are a tie everywhere.
"""

from __future__ import annotations

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
    out: list[Any] = []
    for name, dtype in view.join_keys:
        values, _ = column_for_codec(dtype, frame[name])
        out.append(values)
    return out


def entity_keys(view: FeatureView, frame: pd.DataFrame) -> list[str]:
    return feast_keys.entity_key_hex(
        view.join_keys, key_columns(view, frame), view.entity_key_serialization_version
    )


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
    values = {}
    for feature in view.features:
        data, nulls = column_for_codec(feature.dtype, frame[feature.name])
        values[feature.name] = feast_values.encode_values(feature.dtype, data, nulls)
    return EncodedRows(
        entity_keys=keys if keys is not None else entity_keys(view, frame),
        event_ms=event_ms,
        created_ms=created_ms,
        values=values,
    )
