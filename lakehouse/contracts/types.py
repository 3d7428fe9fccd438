"""The one type vocabulary of every contract (the event, lake tables, warehouse tables, collection
columns), mapped once to each engine: Spark SQL, Arrow, DuckDB. Names are lakehouse.core.collections'
TYPE_NAMES plus decimal(p,s)."""

from __future__ import annotations

import pyarrow as pa

from lakehouse.core.collections import DECIMAL, TYPE_NAMES

_SPARK = {"string": "STRING", "int": "INT", "long": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN",
          "date": "DATE", "timestamp": "TIMESTAMP"}
_DUCKDB = {"string": "VARCHAR", "int": "INTEGER", "long": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN",
           "date": "DATE", "timestamp": "TIMESTAMPTZ"}
_ARROW = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "double": pa.float64(), "bool": pa.bool_(),
          "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}
assert set(_SPARK) == set(_DUCKDB) == set(_ARROW) == set(TYPE_NAMES), "every vocabulary type maps to every engine"

Columns = tuple[tuple[str, str], ...]  # (name, vocabulary type), in order


def _decimal(kind: str) -> tuple[int, int] | None:
    match = DECIMAL.fullmatch(kind)
    return (int(match.group(1)), int(match.group(2))) if match else None


def spark(kind: str) -> str:
    dec = _decimal(kind)
    return f"DECIMAL({dec[0]}, {dec[1]})" if dec else _SPARK[kind]


def duckdb(kind: str) -> str:
    dec = _decimal(kind)
    return f"DECIMAL({dec[0]}, {dec[1]})" if dec else _DUCKDB[kind]


def arrow(kind: str) -> pa.DataType:
    dec = _decimal(kind)
    return pa.decimal128(*dec) if dec else _ARROW[kind]


def arrow_schema(columns: Columns) -> pa.Schema:
    return pa.schema([(name, arrow(kind)) for name, kind in columns])


def spark_ddl(columns: Columns) -> str:
    """Spark's DDL form of the columns, e.g. for from_json."""
    return ", ".join(f"`{name}` {spark(kind)}" for name, kind in columns)


def ident(name: str) -> str:
    """A table or column name quoted for DuckDB (and standard SQL): names from the collections spec may
    be keywords (`order`, `group`) or start with a digit."""
    return '"' + name.replace('"', '""') + '"'
