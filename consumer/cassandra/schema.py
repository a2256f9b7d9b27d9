"""Feast's Cassandra online-store layout: the keyspace and table DDL, and table names.

The table is the one `feast apply` creates (`"<keyspace>"."<project>_<view>"`, one partition per entity,
one row per feature), so Feast serves what the writer puts there.
"""

from __future__ import annotations

from collections.abc import Mapping

from consumer.core.views import FeatureView, check_identifier


def quote(identifier: str) -> str:
    """A validated identifier, double-quoted as Feast quotes it (so it is case-sensitive)."""
    check_identifier(identifier, "identifier")
    return f'"{identifier}"'


def table_name(keyspace: str, view: FeatureView) -> str:
    return f"{quote(keyspace)}.{quote(view.table)}"


def create_keyspace_cql(keyspace: str, replication: Mapping[str, str | int]) -> str:
    def literal(value: str | int) -> str:
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    pairs = ", ".join(f"{literal(str(k))}: {literal(v)}" for k, v in replication.items())
    return f"CREATE KEYSPACE IF NOT EXISTS {quote(keyspace)} WITH replication = {{{pairs}}}"


def create_table_cql(keyspace: str, view: FeatureView) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table_name(keyspace, view)} (\n"
        "    entity_key TEXT,\n"
        "    feature_name TEXT,\n"
        "    value BLOB,\n"
        "    event_ts TIMESTAMP,\n"
        "    created_ts TIMESTAMP,\n"
        "    PRIMARY KEY ((entity_key), feature_name)\n"
        ") WITH CLUSTERING ORDER BY (feature_name ASC)"
    )
