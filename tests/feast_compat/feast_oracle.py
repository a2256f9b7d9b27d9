"""Runs inside the Feast virtualenv: answers "what bytes does Feast write for these rows?".

One JSON request per line on stdin, one JSON answer per line on stdout. A request describes a view
(join keys with value types, features with dtypes, entity key serialization version) and its rows as
columns. The oracle builds a real Feast FeatureView and a push frame, and runs the conversion of
Feast's push path (`feast.utils._convert_arrow_to_proto`, what `write_to_online_store` calls) and the
key serialization of its Cassandra online store (`serialize_entity_key(...).hex()`).

Values travel as JSON: bytes as {"$b": base64}, non-finite floats as {"$f": "nan"|"inf"|"-inf"},
timestamps as {"$t": microseconds since the epoch}.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from feast import Entity, FeatureView, Field, FileSource, ValueType  # noqa: E402
from feast import types as ft  # noqa: E402
from feast.infra.key_encoding_utils import serialize_entity_key  # noqa: E402
from feast.utils import _convert_arrow_to_proto  # noqa: E402

SCALARS = {
    "Int32": ft.Int32, "Int64": ft.Int64, "Float32": ft.Float32, "Float64": ft.Float64,
    "String": ft.String, "Bytes": ft.Bytes, "Bool": ft.Bool, "UnixTimestamp": ft.UnixTimestamp,
}
KEY_TYPES = {"INT32": ft.Int32, "INT64": ft.Int64, "STRING": ft.String, "BYTES": ft.Bytes,
             "UNIX_TIMESTAMP": ft.UnixTimestamp}


def feast_type(name):
    if name.startswith("Array("):
        return ft.Array(SCALARS[name[6:-1]])
    return SCALARS[name]


def decode(v):
    if isinstance(v, dict):
        if "$b" in v:
            return base64.b64decode(v["$b"])
        if "$f" in v:
            return float(v["$f"])
        if "$t" in v:
            return pd.Timestamp(v["$t"], unit="us", tz="UTC")
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def column(dtype, values):
    """The push-frame column the daemon builds for this dtype (see consumer/feast/frame.py)."""
    values = [decode(v) for v in values]
    nulls = [v is None for v in values]
    if dtype.startswith("Array(") or dtype in ("String", "Bytes"):
        return pd.Series(values, dtype=object)
    if dtype == "UnixTimestamp":
        return pd.Series(pd.to_datetime([v for v in values], utc=True)).astype("datetime64[us, UTC]")
    if dtype in ("Float32", "Float64"):
        arr = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        return pd.Series(arr.astype(np.float32 if dtype == "Float32" else np.float64))
    if dtype == "Bool":
        if any(nulls):
            return pd.Series(pd.array(values, dtype="boolean"))
        return pd.Series(np.array(values, dtype=np.bool_))
    np_type = np.int32 if dtype == "Int32" else np.int64
    if any(nulls):
        return pd.Series(pd.array(values, dtype="Int32" if dtype == "Int32" else "Int64"))
    return pd.Series(np.array(values, dtype=np_type))


KEY_DTYPE = {"INT32": "Int32", "INT64": "Int64", "STRING": "String", "BYTES": "Bytes",
             "UNIX_TIMESTAMP": "UnixTimestamp"}


def answer(req):
    keys = req["entities"]
    features = req["features"]
    cols = req["columns"]
    entities = [Entity(name=f"entity_{k}", join_keys=[k], value_type=ValueType[vt]) for k, vt in keys]
    schema = [Field(name=k, dtype=KEY_TYPES[vt]) for k, vt in keys]
    schema += [Field(name=f, dtype=feast_type(d)) for f, d in features]
    view = FeatureView(
        name="compat_view",
        entities=entities,
        schema=schema,
        source=FileSource(path="unused.parquet", timestamp_field="event_timestamp"),
    )
    frame = pd.DataFrame({k: column(KEY_DTYPE[vt], cols[k]) for k, vt in keys})
    frame["event_timestamp"] = column("UnixTimestamp", cols["event_timestamp"])
    for f, d in features:
        frame[f] = column(d, cols[f])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rows = _convert_arrow_to_proto(table, view, {k: ValueType[vt] for k, vt in keys})
    version = req.get("version", 3)
    return {
        "keys": [serialize_entity_key(r[0], entity_key_serialization_version=version).hex() for r in rows],
        "values": {f: [r[1][f].SerializeToString().hex() for r in rows] for f, _ in features},
    }


def main():
    for line in sys.stdin:
        try:
            out = answer(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - report any refusal, keep serving
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
