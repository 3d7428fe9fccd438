"""DuckDB tables of the warehouse, defined once."""

from __future__ import annotations

from lakehouse.tables import ORDER_ATTRIBUTES

# Source order of a change: cluster time, then position among changes at that cluster time.
SOURCE_ORDER = ("cluster_time_s", "cluster_time_inc", "txn_op_index")

FACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("change_id", "VARCHAR PRIMARY KEY"),
    ("op", "VARCHAR NOT NULL"),
    ("collection", "VARCHAR NOT NULL"),
    ("doc_id", "VARCHAR NOT NULL"),
    ("order_id", "VARCHAR"),
    ("cluster_time_s", "BIGINT NOT NULL"),
    ("cluster_time_inc", "BIGINT NOT NULL"),
    ("txn_op_index", "BIGINT NOT NULL"),
    ("event_time", "TIMESTAMPTZ"),
    ("wall_time_ms", "BIGINT"),
    ("document", "VARCHAR"),  # the post-image as Extended JSON (null for deletes)
    *((attr, "VARCHAR") for attr in ORDER_ATTRIBUTES),
    ("kafka_topic", "VARCHAR"),
    ("kafka_partition", "INTEGER"),
    ("kafka_offset", "BIGINT"),
    ("loaded_at", "TIMESTAMPTZ NOT NULL"),
)

ORDERS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("doc_id", "VARCHAR PRIMARY KEY"),
    ("order_id", "VARCHAR"),
    *((attr, "VARCHAR") for attr in ORDER_ATTRIBUTES),
    ("document", "VARCHAR NOT NULL"),
    ("last_change_id", "VARCHAR NOT NULL"),
    ("cluster_time_s", "BIGINT NOT NULL"),
    ("cluster_time_inc", "BIGINT NOT NULL"),
    ("txn_op_index", "BIGINT NOT NULL"),
    ("updated_at", "TIMESTAMPTZ"),
)


def _create(name: str, columns: tuple[tuple[str, str], ...]) -> str:
    body = ",\n  ".join(f"{col} {kind}" for col, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {body}\n)"


DDL = (
    _create("fact_order_changes", FACT_COLUMNS),
    _create("orders", ORDERS_COLUMNS),
    """CREATE TABLE IF NOT EXISTS load_state (
  source VARCHAR PRIMARY KEY,
  delta_version BIGINT NOT NULL,
  rows_loaded BIGINT NOT NULL,
  loaded_at TIMESTAMPTZ NOT NULL
)""",
)
