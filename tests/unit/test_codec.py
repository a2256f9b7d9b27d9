"""The codec's own invariants (byte equality with Feast itself is in tests/feast_compat)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.dtypes import DTYPES, Kind
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
