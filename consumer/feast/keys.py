"""Feast's entity keys: `feast.infra.key_encoding_utils.serialize_entity_key` for serialization versions 2
and 3, stored by the Cassandra online store as lowercase hex. Equality with Feast's own bytes is proven in
`tests/feast_compat/` against `feast` itself."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.core.dtypes import Dtype, Kind, ValueType

SUPPORTED_KEY_VERSIONS = (2, 3)
_KEY_STRING_TYPE = struct.pack("<I", ValueType.STRING)


def _key_value_bytes(dtype: Dtype, value: Any) -> bytes:
    kind = dtype.kind
    if kind is Kind.STRING:
        raw: bytes = value.encode("utf-8")
        return raw
    if kind is Kind.BYTES:
        return bytes(value)
    if kind is Kind.INT32:
        return struct.pack("<i", int(value))
    return struct.pack("<q", int(value))  # INT64 and UNIX_TIMESTAMP


def key_prefix(join_keys: Sequence[str], version: int) -> bytes:
    """The part of a serialized entity key that names the (sorted) join keys."""
    if version not in SUPPORTED_KEY_VERSIONS:
        raise ValueError(f"entity_key_serialization_version {version} is not supported; use 2 or 3")
    out = [struct.pack("<I", len(join_keys))] if version > 2 else []
    for name in sorted(join_keys):
        raw = name.encode("utf-8")
        out.append(_KEY_STRING_TYPE)
        if version > 2:
            out.append(struct.pack("<I", len(raw)))
        out.append(raw)
    return b"".join(out)


def serialize_entity_key(keys: Sequence[tuple[str, Dtype, Any]], version: int = 3) -> bytes:
    """Feast's `serialize_entity_key` for one entity: (join key, value type, value) triples."""
    ordered = sorted(keys, key=lambda k: k[0])
    out = [key_prefix([k[0] for k in ordered], version)]
    for _, dtype, value in ordered:
        raw = _key_value_bytes(dtype, value)
        out.append(struct.pack("<II", dtype.value_type, len(raw)))
        out.append(raw)
    return b"".join(out)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).astype(np.uint32)


def _hex_rows(mat: npt.NDArray[np.uint8]) -> list[str]:
    """Lowercase hex of each row, as str, built as UCS-4 code points and read through numpy's `U` view."""
    n, width = mat.shape
    codes = np.empty((n, 2 * width), dtype=np.uint32)
    codes[:, 0::2] = _HEX_DIGITS[mat >> 4]
    codes[:, 1::2] = _HEX_DIGITS[mat & 0x0F]
    out: list[str] = codes.view(f"U{2 * width}").ravel().tolist()
    return out


def entity_key_hex(
    join_keys: Sequence[tuple[str, Dtype]], columns: Sequence[Any], version: int = 3
) -> list[str]:
    """Hex entity keys, as the Cassandra online store stores them, for whole key columns.

    `columns[i]` holds the values of `join_keys[i]` (a numpy array for numbers, a sequence otherwise).
    A single int64 or int32 key, the common case, is encoded with numpy without a Python loop.
    """
    n = len(columns[0]) if columns else 0
    if n == 0:
        return []
    if len(join_keys) == 1 and join_keys[0][1].kind in (Kind.INT64, Kind.INT32, Kind.UNIX_TIMESTAMP):
        name, dtype = join_keys[0]
        width = 4 if dtype.kind is Kind.INT32 else 8
        head = key_prefix([name], version) + struct.pack("<II", dtype.value_type, width)
        arr = np.ascontiguousarray(columns[0], dtype="<i4" if width == 4 else "<i8")
        mat = np.empty((n, len(head) + width), dtype=np.uint8)
        mat[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        mat[:, len(head) :] = arr.view(np.uint8).reshape(n, width)
        return _hex_rows(mat)
    order = sorted(range(len(join_keys)), key=lambda i: join_keys[i][0])
    prefix = key_prefix([join_keys[i][0] for i in order], version)
    dtypes = [join_keys[i][1] for i in order]
    cols = [columns[i] for i in order]
    out: list[str] = []
    for row in range(n):
        parts = [prefix]
        for dtype, col in zip(dtypes, cols, strict=True):
            raw = _key_value_bytes(dtype, col[row])
            parts.append(struct.pack("<II", dtype.value_type, len(raw)))
            parts.append(raw)
        out.append(b"".join(parts).hex())
    return out
