"""The codec's own invariants (byte equality with Feast itself is in tests/feast_compat)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.dtypes import DTYPES, Kind
from consumer.feast import frame as frame_module
from consumer.feast import keys as feast_keys
from consumer.feast import values as feast_values


def values_for(kind: Kind) -> st.SearchStrategy[Any]:
    return {
        Kind.INT32: st.integers(-(2**31), 2**31 - 1),
        Kind.INT64: st.integers(-(2**63), 2**63 - 1),
        Kind.UNIX_TIMESTAMP: st.integers(-(2**40), 2**40),
        Kind.FLOAT32: st.floats(width=32, allow_nan=False),
        Kind.FLOAT64: st.floats(allow_nan=False),
        Kind.STRING: st.text(max_size=30),
        Kind.BYTES: st.binary(max_size=30),
        Kind.BOOL: st.booleans(),
    }[kind]


@pytest.mark.parametrize("name", sorted(DTYPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decode_inverts_encode(name: str, data: st.DataObject) -> None:
    dtype = DTYPES[name]
    item = values_for(dtype.kind)
    value = data.draw(st.lists(item, max_size=5) if dtype.is_list else item)
    assert feast_values.decode_value(dtype, feast_values.encode_value(dtype, value)) == value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50))
def test_vectorised_varints_match_the_per_value_encoder(values: list[int]) -> None:
    dtype = DTYPES["Int64"]
    assert feast_values.encode_values(dtype, np.array(values, dtype=np.int64)) == [
        feast_values.encode_value(dtype, v) for v in values
    ]


def test_nulls_and_nan_are_the_empty_value() -> None:
    encoded = feast_values.encode_values(DTYPES["Float64"], np.array([1.5, math.nan]))
    assert encoded[1] == b""
    assert feast_values.decode_value(DTYPES["Float64"], b"") is None
    ints = feast_values.encode_values(DTYPES["Int64"], np.array([5, 0]), np.array([False, True]))
    assert ints == [b"\x20\x05", b""]


def test_key_prefix_refuses_unknown_versions() -> None:
    with pytest.raises(ValueError, match="not supported"):
        feast_keys.key_prefix(["a"], 1)


# The decode path hands the codec its mapped columns directly (frame.codec_values); the push frame
# path (frame.column_for_codec on a Series) is the one tests/feast_compat proves byte-equal to Feast.
# The two must agree value for value, nulls and NaN included.

def mapped_values(kind: Kind) -> st.SearchStrategy[Any]:
    """What consumer.decode.mapping makes of a column's values (before nulls are marked)."""
    return {
        Kind.INT32: st.integers(-(2**31), 2**31 - 1),
        Kind.INT64: st.integers(-(2**63), 2**63 - 1),
        Kind.UNIX_TIMESTAMP: st.integers(-(2**62), 2**62),  # microseconds
        Kind.FLOAT32: st.floats(),
        Kind.FLOAT64: st.floats(),
        Kind.STRING: st.one_of(st.none(), st.text(max_size=10)),
        Kind.BYTES: st.one_of(st.none(), st.binary(max_size=10)),
        Kind.BOOL: st.booleans(),
    }[kind]


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(theirs, np.ndarray):
        return (isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype
                and np.array_equal(ours, theirs, equal_nan=ours.dtype.kind == "f"))
    return bool(ours == theirs)


@pytest.mark.parametrize("name", sorted(n for n, d in DTYPES.items() if not d.is_list))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_mapped_columns_reach_the_codec_as_their_push_frame_column_would(name: str, data: st.DataObject) -> None:
    dtype = DTYPES[name]
    values = data.draw(st.lists(mapped_values(dtype.kind), min_size=1, max_size=12))
    nulls = None
    if dtype.kind not in (Kind.STRING, Kind.BYTES, Kind.FLOAT32, Kind.FLOAT64):
        values = np.array(values, dtype=np.bool_ if dtype.kind is Kind.BOOL else np.int64)
        if data.draw(st.booleans()):
            nulls = np.array(data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values))))
    elif dtype.kind in (Kind.FLOAT32, Kind.FLOAT64):
        values = np.array(values, dtype=np.float64)
    column = frame_module.Column(dtype, values, nulls)
    ours_values, ours_nulls = column.codec()
    frame_values, frame_nulls = frame_module.column_for_codec(dtype, column.series())
    assert _same(ours_values, frame_values)
    assert (ours_nulls is None) == (frame_nulls is None)
    if frame_nulls is not None:
        assert _same(ours_nulls, frame_nulls)
    assert feast_values.encode_values(dtype, ours_values, ours_nulls) == \
        feast_values.encode_values(dtype, frame_values, frame_nulls)
