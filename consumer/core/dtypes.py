"""Feast's feature dtypes and entity value types, with the protobuf facts the codec needs.

Names follow Feast: `Int64`, `Float32`, `Array(Int64)` for features (`feast.types`), and the
`ValueType` enum names (`INT64`, `STRING`, ...) for entity join keys. Field numbers and enum values
are those of Feast's `feast/types/Value.proto`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class ValueType(enum.IntEnum):
    """`feast.types.ValueType.Enum`: the type tag used inside serialized entity keys."""

    BYTES = 1
    STRING = 2
    INT32 = 3
    INT64 = 4
    DOUBLE = 5
    FLOAT = 6
    BOOL = 7
    UNIX_TIMESTAMP = 8
    BYTES_LIST = 11
    STRING_LIST = 12
    INT32_LIST = 13
    INT64_LIST = 14
    DOUBLE_LIST = 15
    FLOAT_LIST = 16
    BOOL_LIST = 17
    UNIX_TIMESTAMP_LIST = 18


class Kind(enum.Enum):
    """The scalar kind behind a dtype; lists are a kind plus `is_list`."""

    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BYTES = "bytes"
    BOOL = "bool"
    UNIX_TIMESTAMP = "unix_timestamp"


@dataclass(frozen=True)
class Dtype:
    """One Feast feature dtype.

    `field` is the number of the `Value.val` oneof member that carries it; for a list the member is a
    message whose repeated field 1 holds the items.
    """

    name: str
    kind: Kind
    is_list: bool
    value_type: ValueType
    field: int

    def __str__(self) -> str:
        return self.name


_SCALARS: dict[str, tuple[Kind, ValueType]] = {
    "Bytes": (Kind.BYTES, ValueType.BYTES),
    "String": (Kind.STRING, ValueType.STRING),
    "Int32": (Kind.INT32, ValueType.INT32),
    "Int64": (Kind.INT64, ValueType.INT64),
    "Float64": (Kind.FLOAT64, ValueType.DOUBLE),
    "Float32": (Kind.FLOAT32, ValueType.FLOAT),
    "Bool": (Kind.BOOL, ValueType.BOOL),
    "UnixTimestamp": (Kind.UNIX_TIMESTAMP, ValueType.UNIX_TIMESTAMP),
}

DTYPES: dict[str, Dtype] = {}
for _name, (_kind, _vt) in _SCALARS.items():
    DTYPES[_name] = Dtype(_name, _kind, False, _vt, int(_vt))
    _list_vt = ValueType(int(_vt) + 10)
    DTYPES[f"Array({_name})"] = Dtype(f"Array({_name})", _kind, True, _list_vt, int(_list_vt))

# Entity join keys: the value types Feast's serialize_entity_key accepts.
ENTITY_VALUE_TYPES: dict[str, Dtype] = {
    "STRING": DTYPES["String"],
    "BYTES": DTYPES["Bytes"],
    "INT32": DTYPES["Int32"],
    "INT64": DTYPES["Int64"],
    "UNIX_TIMESTAMP": DTYPES["UnixTimestamp"],
}

_ARRAY = re.compile(r"^\s*(?:Array|List)\s*[\(\[]\s*(\w+)\s*[\)\]]\s*$")


def parse_dtype(text: str) -> Dtype:
    """Parse a feature dtype as Feast writes it (`Float32`, `Array(Int64)`; `List[Int64]` is accepted)."""
    name = text.strip()
    match = _ARRAY.match(name)
    if match:
        name = f"Array({match.group(1)})"
    try:
        return DTYPES[name]
    except KeyError:
        known = ", ".join(DTYPES)
        raise ValueError(f"unknown dtype {text!r}; supported: {known}") from None


def parse_entity_type(text: str) -> Dtype:
    """Parse an entity value type (`INT64`, `STRING`, ...; Feast dtype names are accepted too)."""
    name = text.strip()
    if name.upper() in ENTITY_VALUE_TYPES:
        return ENTITY_VALUE_TYPES[name.upper()]
    for dtype in ENTITY_VALUE_TYPES.values():
        if dtype.name == name:
            return dtype
    known = ", ".join(ENTITY_VALUE_TYPES)
    raise ValueError(f"unsupported entity value type {text!r}; supported: {known}")
