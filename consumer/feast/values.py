"""Feast's online-store feature values, written without the `feast` package (entity keys: keys.py).

Feature values are serialized `feast.types.Value` protobuf messages. The bytes are produced here
directly: a oneof member is always written, even when it holds the default (Int64 0 is `20 00`),
packed encoding is used for repeated numbers, and a null (None, NaN, NaT) is the empty message.

Scalar number columns are encoded with numpy a whole column at a time: the hot path of the daemon
never builds a protobuf object. Equality with Feast's own bytes is proven in
`tests/feast_compat/` against `feast` itself.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.core.dtypes import Dtype, Kind

BoolArray = npt.NDArray[np.bool_]

_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LEN = 2
_WIRE_FIXED32 = 5

_SCALAR_WIRE = {
    Kind.INT32: _WIRE_VARINT,
    Kind.INT64: _WIRE_VARINT,
    Kind.UNIX_TIMESTAMP: _WIRE_VARINT,
    Kind.BOOL: _WIRE_VARINT,
    Kind.FLOAT32: _WIRE_FIXED32,
    Kind.FLOAT64: _WIRE_FIXED64,
    Kind.STRING: _WIRE_LEN,
    Kind.BYTES: _WIRE_LEN,
}
_FIXED_DTYPE: dict[Kind, np.dtype[Any]] = {Kind.FLOAT32: np.dtype("<f4"), Kind.FLOAT64: np.dtype("<f8")}
_LIST_ITEM_TAG = bytes([(1 << 3) | _WIRE_LEN])  # repeated field 1 of BytesList, Int64List, ...


def tag(dtype: Dtype) -> bytes:
    wire = _WIRE_LEN if dtype.is_list else _SCALAR_WIRE[dtype.kind]
    return _varint((dtype.field << 3) | wire)


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int, or of a negative int as its 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT_VARINTS = [bytes([n]) for n in range(128)]


def _length_prefix(n: int) -> bytes:
    return _SHORT_VARINTS[n] if n < 128 else _varint(n)


# --------------------------------------------------------------------------- vectorised scalars


def _rows(mat: npt.NDArray[np.uint8]) -> list[bytes]:
    """Each row of a C-contiguous byte matrix as one bytes object (numpy's void view: no per-row slicing)."""
    n, width = mat.shape
    if width == 0:
        return [b""] * n
    out: list[bytes] = np.ascontiguousarray(mat).view(f"V{width}").ravel().tolist()
    return out


def _ragged_rows(mat: npt.NDArray[np.uint8], lengths: npt.NDArray[np.int64]) -> list[bytes]:
    """Row i of `mat`, cut to lengths[i] bytes; rows of one length are converted together."""
    distinct = np.unique(lengths)
    if distinct.size == 1:
        return _rows(mat[:, : int(distinct[0])])
    out = np.empty(mat.shape[0], dtype=object)
    for length in distinct.tolist():
        idx = np.flatnonzero(lengths == length)
        out[idx] = _rows(mat[idx, :length])
    result: list[bytes] = out.tolist()
    return result


def _encode_fixed(prefix: bytes, raw: npt.NDArray[np.uint8]) -> list[bytes]:
    """Each row is `prefix` followed by that row of `raw` (an n x w byte matrix)."""
    n, w = raw.shape
    mat = np.empty((n, len(prefix) + w), dtype=np.uint8)
    mat[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    mat[:, len(prefix) :] = raw
    return _rows(mat)


def _encode_varints(prefix: bytes, values: npt.NDArray[np.int64]) -> list[bytes]:
    """Each row is `prefix` followed by the protobuf varint of that int64 (negatives take 10 bytes)."""
    u = values.astype(np.int64, copy=False).view(np.uint64)
    n_groups = np.ones(u.shape[0], dtype=np.int64)
    for k in range(1, 10):
        n_groups += u >= np.uint64(1 << (7 * k))
    shifts = (np.arange(10, dtype=np.uint64) * np.uint64(7))[None, :]
    groups = ((u[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(10)[None, :] < (n_groups[:, None] - 1)
    groups |= more.astype(np.uint8) << np.uint8(7)
    p = len(prefix)
    mat = np.empty((u.shape[0], p + 10), dtype=np.uint8)
    mat[:, :p] = np.frombuffer(prefix, dtype=np.uint8)
    mat[:, p:] = groups
    return _ragged_rows(mat, n_groups + p)


def _encode_scalar_numbers(dtype: Dtype, values: npt.NDArray[Any]) -> list[bytes]:
    prefix = tag(dtype)
    kind = dtype.kind
    if kind in _FIXED_DTYPE:
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(values, dtype=_FIXED_DTYPE[kind])
        return _encode_fixed(prefix, arr.view(np.uint8).reshape(arr.shape[0], -1))
    if kind is Kind.BOOL:
        arr = np.ascontiguousarray(values, dtype=np.bool_).view(np.uint8).reshape(-1, 1)
        return _encode_fixed(prefix, arr)
    return _encode_varints(prefix, np.asarray(values, dtype=np.int64))


# --------------------------------------------------------------------------- per-row encoders


def _scalar_encoder(dtype: Dtype) -> Callable[[Any], bytes]:
    prefix = tag(dtype)
    kind = dtype.kind
    if kind is Kind.STRING:
        def enc_str(v: Any) -> bytes:
            raw = str(v).encode("utf-8")
            return prefix + _length_prefix(len(raw)) + raw
        return enc_str
    if kind is Kind.BYTES:
        def enc_bytes(v: Any) -> bytes:
            raw = bytes(v)
            return prefix + _length_prefix(len(raw)) + raw
        return enc_bytes
    if kind is Kind.FLOAT32:
        return lambda v: prefix + _float32_bytes([v])
    if kind is Kind.FLOAT64:
        return lambda v: prefix + struct.pack("<d", v)
    if kind is Kind.BOOL:
        return lambda v: prefix + (b"\x01" if v else b"\x00")
    return lambda v: prefix + _varint(int(v))


def _float_array(items: Sequence[Any]) -> npt.NDArray[np.float64]:
    arr = np.asarray(items, dtype=np.float64)
    # NaN items are written as the canonical quiet NaN, whatever their payload (as Feast's push path,
    # which passes list items through pyarrow, does).
    return np.where(np.isnan(arr), np.nan, arr)


def _float32_bytes(items: Sequence[Any]) -> bytes:
    # Rounds like protobuf's double -> float conversion; out of range becomes +-inf, as in Feast.
    with np.errstate(over="ignore", invalid="ignore"):
        return _float_array(items).astype("<f4").tobytes()


def _packed_payload(kind: Kind, items: Sequence[Any]) -> bytes:
    if kind is Kind.FLOAT32:
        return _float32_bytes(items)
    if kind is Kind.FLOAT64:
        return _float_array(items).astype("<f8").tobytes()
    if kind is Kind.BOOL:
        return bytes(1 if v else 0 for v in items)
    return b"".join(_varint(int(v)) for v in items)


# Feast replaces None items inside a list by a type default before encoding (type_map._LIST_NONE_DEFAULTS).
_NULL_TIMESTAMP_INT = -9223372036854775808  # Feast's NULL_TIMESTAMP_INT_VALUE: int64 minimum
_LIST_ITEM_DEFAULTS: dict[Kind, Any] = {
    Kind.STRING: "",
    Kind.BYTES: b"",
    Kind.INT32: 0,
    Kind.INT64: 0,
    Kind.FLOAT32: 0.0,
    Kind.FLOAT64: 0.0,
    Kind.BOOL: False,
    Kind.UNIX_TIMESTAMP: _NULL_TIMESTAMP_INT,
}


def _list_encoder(dtype: Dtype) -> Callable[[Any], bytes]:
    prefix = tag(dtype)
    kind = dtype.kind
    default = _LIST_ITEM_DEFAULTS[kind]

    def encode(items: Any) -> bytes:
        items = [default if v is None else v for v in items]
        if kind is Kind.STRING or kind is Kind.BYTES:
            parts = []
            for item in items:
                raw = item.encode("utf-8") if kind is Kind.STRING else bytes(item)
                parts.append(_LIST_ITEM_TAG + _length_prefix(len(raw)) + raw)
            body = b"".join(parts)
        elif items:
            packed = _packed_payload(kind, items)
            body = _LIST_ITEM_TAG + _length_prefix(len(packed)) + packed
        else:
            body = b""  # an empty packed field is not written at all
        return prefix + _length_prefix(len(body)) + body

    return encode


def is_null_scalar(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return bool(value is np.datetime64("NaT"))


# --------------------------------------------------------------------------- public API


def encode_values(dtype: Dtype, values: Any, nulls: BoolArray | None = None) -> list[bytes]:
    """Serialized `feast.types.Value` for every row of one feature column.

    `values` is a numpy array for scalar numbers and bools (with `nulls` marking missing rows; NaN
    in a float column counts as null, as in Feast), or a sequence of Python objects (None for null)
    for strings, bytes and lists. UnixTimestamp values are int64 seconds since the epoch, as Feast
    stores them.
    """
    if dtype.is_list or dtype.kind in (Kind.STRING, Kind.BYTES):
        encode = _list_encoder(dtype) if dtype.is_list else _scalar_encoder(dtype)
        return [b"" if v is None else encode(v) for v in values]
    arr = np.asarray(values)
    if arr.shape[0] == 0:
        return []
    null_mask = np.zeros(arr.shape[0], dtype=np.bool_) if nulls is None else np.asarray(nulls, np.bool_)
    if arr.dtype.kind == "f":
        null_mask = null_mask | np.isnan(arr)
    if null_mask.any():
        out: list[bytes] = [b""] * arr.shape[0]
        present = np.flatnonzero(~null_mask)
        if present.size:
            for i, encoded in zip(present.tolist(), _encode_scalar_numbers(dtype, arr[present]), strict=True):
                out[i] = encoded
        return out
    return _encode_scalar_numbers(dtype, arr)


def encode_value(dtype: Dtype, value: Any) -> bytes:
    """One serialized `feast.types.Value` (convenience for single values and tests)."""
    if dtype.is_list:
        return b"" if value is None else _list_encoder(dtype)(value)
    if is_null_scalar(value):
        return b""
    return _scalar_encoder(dtype)(value)


# --------------------------------------------------------------------------- reading values back


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed(value: int, bits: int = 64) -> int:
    value &= (1 << 64) - 1
    if bits == 32:
        value &= (1 << 32) - 1
        return value - (1 << 32) if value >= 1 << 31 else value
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar_from(kind: Kind, wire: int, data: bytes, pos: int) -> tuple[Any, int]:
    if wire == _WIRE_FIXED32:
        return float(np.frombuffer(data[pos : pos + 4], "<f4")[0]), pos + 4
    if wire == _WIRE_FIXED64:
        return float(np.frombuffer(data[pos : pos + 8], "<f8")[0]), pos + 8
    if wire == _WIRE_LEN:
        n, pos = _read_varint(data, pos)
        raw = data[pos : pos + n]
        return (raw.decode("utf-8") if kind is Kind.STRING else bytes(raw)), pos + n
    raw_int, pos = _read_varint(data, pos)
    if kind is Kind.BOOL:
        return bool(raw_int), pos
    return _signed(raw_int, 32 if kind is Kind.INT32 else 64), pos


def decode_value(dtype: Dtype, data: bytes) -> Any:
    """A serialized `feast.types.Value` back to Python (None for the empty message).

    UnixTimestamp values come back as int seconds, as they are stored.
    """
    if not data:
        return None
    key, pos = _read_varint(data, 0)
    field, wire = key >> 3, key & 7
    if field != dtype.field:
        raise ValueError(f"value carries field {field}, not the {dtype} field {dtype.field}")
    if not dtype.is_list:
        return _scalar_from(dtype.kind, wire, data, pos)[0]
    length, pos = _read_varint(data, pos)
    end = pos + length
    items: list[Any] = []
    item_wire = {Kind.FLOAT32: _WIRE_FIXED32, Kind.FLOAT64: _WIRE_FIXED64}.get(dtype.kind, _WIRE_VARINT)
    while pos < end:
        _, pos = _read_varint(data, pos)  # tag of repeated field 1
        if dtype.kind in (Kind.STRING, Kind.BYTES):
            item, pos = _scalar_from(dtype.kind, _WIRE_LEN, data, pos)
            items.append(item)
            continue
        n, pos = _read_varint(data, pos)  # packed run
        stop = pos + n
        while pos < stop:
            item, pos = _scalar_from(dtype.kind, item_wire, data, pos)
            items.append(item)
    return items
