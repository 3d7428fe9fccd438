"""DuckDB tables and views of the warehouse, defined once.

Tables hold what was loaded (`fact_order_changes`) and what is derived from it by ordered apply
(`orders`). Everything else is a view over them, so it can never disagree with them: the history
(SCD type 2) and the analytics. `SCHEMA_VERSION` is stored in the file; a file without it, or with
another version, is refused rather than written (see loader.connect).
"""

from __future__ import annotations

from lakehouse import tables
from lakehouse.tables import ORDER_ATTRIBUTES, SILVER_COLUMNS

SCHEMA_VERSION = 3  # v3: doc_id is the _id's type-exact identity (envelope v2)

# Source order of a change: cluster time, then position among changes at that cluster time.
SOURCE_ORDER = ("cluster_time_s", "cluster_time_inc", "txn_op_index")

# Typed money columns, with silver's types (lakehouse/tables.py) in DuckDB's spelling.
_DUCKDB_TYPE = {"STRING": "VARCHAR"}
MONEY_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, _DUCKDB_TYPE.get(kind, kind)) for name, kind in SILVER_COLUMNS if name in tables.MONEY_COLUMNS
)

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
    ("resume_token", "VARCHAR"),
    ("document", "VARCHAR"),  # the post-image as Extended JSON (null for deletes)
    *((attr, "VARCHAR") for attr in ORDER_ATTRIBUTES),
    *MONEY_COLUMNS,
    ("kafka_topic", "VARCHAR"),
    ("kafka_partition", "INTEGER"),
    ("kafka_offset", "BIGINT"),
    ("loaded_at", "TIMESTAMPTZ NOT NULL"),
)

ORDERS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("doc_id", "VARCHAR PRIMARY KEY"),
    ("order_id", "VARCHAR"),
    *((attr, "VARCHAR") for attr in ORDER_ATTRIBUTES),
    *MONEY_COLUMNS,
    ("document", "VARCHAR NOT NULL"),
    ("last_change_id", "VARCHAR NOT NULL"),
    ("cluster_time_s", "BIGINT NOT NULL"),
    ("cluster_time_inc", "BIGINT NOT NULL"),
    ("txn_op_index", "BIGINT NOT NULL"),
    ("updated_at", "TIMESTAMPTZ"),
)

TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "fact_order_changes": FACT_COLUMNS,
    "orders": ORDERS_COLUMNS,
    "load_state": (
        ("source", "VARCHAR PRIMARY KEY"),
        ("delta_version", "BIGINT NOT NULL"),
        ("rows_loaded", "BIGINT NOT NULL"),
        ("loaded_at", "TIMESTAMPTZ NOT NULL"),
    ),
    "warehouse_meta": (
        ("key", "VARCHAR PRIMARY KEY"),
        ("value", "VARCHAR NOT NULL"),
    ),
}


def _create(name: str, columns: tuple[tuple[str, str], ...]) -> str:
    body = ",\n  ".join(f"{col} {kind}" for col, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {body}\n)"


DDL = tuple(_create(name, columns) for name, columns in TABLES.items())

_ORDER = ", ".join(SOURCE_ORDER)
_CREATED = "try_cast(json_extract_string(document, '$.created_at.$date') AS TIMESTAMPTZ)"
# The newest complete snapshot: documents whose latest change is older were deleted meanwhile.
_CUTOFF = (
    "(SELECT cluster_time_s, cluster_time_inc FROM fact_order_changes WHERE op = 'snapshot_end' "
    "UNION ALL SELECT 0, 0 ORDER BY 1 DESC, 2 DESC LIMIT 1)"
)



def _revenue_per(unit: str) -> str:
    return f"""
SELECT date_trunc('{unit}', {_CREATED}) AS {unit}, amount_currency AS currency, count(*) AS orders,
       sum(amount) AS revenue, avg(amount)::DECIMAL(18, 2) AS average_amount,
       count(*) FILTER (WHERE is_high_value) AS high_value_orders
FROM orders WHERE status IS DISTINCT FROM 'cancelled' GROUP BY ALL"""


# name -> SELECT. Revenue counts current orders that are not cancelled, per currency (amounts in
# different currencies are never added together); orders with an unreadable amount count as orders
# but add no revenue.
VIEWS: dict[str, str] = {
    "orders_history": f"""
WITH cutoff AS {_CUTOFF},
versions AS (
  SELECT *, lead(to_timestamp(cluster_time_s)) OVER w AS next_version_at,
         lead(change_id) OVER w IS NULL AS is_latest
  FROM fact_order_changes
  WHERE op <> 'snapshot_end' AND (op = 'delete' OR document IS NOT NULL)
  WINDOW w AS (PARTITION BY doc_id ORDER BY {_ORDER})
)
SELECT v.doc_id, v.order_id, v.change_id, v.op, {", ".join(f"v.{a}" for a in ORDER_ATTRIBUTES)},
       v.amount, v.amount_currency, v.is_high_value, v.document,
       v.cluster_time_s, v.cluster_time_inc, v.txn_op_index,
       to_timestamp(v.cluster_time_s) AS valid_from,
       CASE WHEN NOT v.is_latest THEN v.next_version_at
            WHEN (v.cluster_time_s, v.cluster_time_inc) < (c.cluster_time_s, c.cluster_time_inc)
            THEN to_timestamp(c.cluster_time_s) END AS valid_to,
       v.op = 'delete' AS is_tombstone,
       v.is_latest AND v.op <> 'delete'
         AND (v.cluster_time_s, v.cluster_time_inc) >= (c.cluster_time_s, c.cluster_time_inc) AS is_current
FROM versions v, cutoff c""",
    "revenue_daily": _revenue_per("day"),
    "revenue_hourly": _revenue_per("hour"),
    "orders_by_status": """
SELECT status, count(*) AS orders, count(*) FILTER (WHERE is_high_value) AS high_value_orders,
       count(*) FILTER (WHERE amount IS NULL) AS orders_without_amount
FROM orders GROUP BY ALL""",
    "high_value_orders": f"""
SELECT order_id, customer_id, status, amount, amount_currency AS currency, {_CREATED} AS created_at, updated_at
FROM orders WHERE is_high_value""",
    "top_customers": """
WITH per_customer AS (
  SELECT customer_id, amount_currency AS currency, count(*) AS orders, sum(amount) AS revenue
  FROM orders WHERE status IS DISTINCT FROM 'cancelled' AND customer_id IS NOT NULL
  GROUP BY customer_id, amount_currency
)
SELECT *, rank() OVER (PARTITION BY currency ORDER BY revenue DESC NULLS LAST) AS rank_in_currency
FROM per_customer""",
    "status_funnel": f"""
WITH steps AS (
  SELECT doc_id, CASE WHEN is_tombstone THEN '(deleted)' ELSE coalesce(status, '(none)') END AS to_status,
         coalesce(lag(CASE WHEN is_tombstone THEN '(deleted)' ELSE coalesce(status, '(none)') END)
                  OVER (PARTITION BY doc_id ORDER BY {_ORDER}), '(new)') AS from_status
  FROM orders_history
)
SELECT from_status, to_status, count(*) AS transitions, count(DISTINCT doc_id) AS orders
FROM steps WHERE from_status <> to_status GROUP BY ALL""",
}

# The streaming job's windowed aggregates live in the lake (Delta); the loader re-points this view at
# the table's live files on every load. Until the first load it is empty with the right columns.
AGGREGATES_VIEW = "streaming_aggregates"
AGGREGATES_EMPTY = (
    "SELECT NULL::TIMESTAMPTZ AS window_start, NULL::TIMESTAMPTZ AS window_end, NULL::VARCHAR AS status, "
    "NULL::BIGINT AS order_count, NULL::DECIMAL(28, 2) AS revenue, NULL::DECIMAL(18, 2) AS average_amount, "
    "NULL::BIGINT AS high_value_changes, NULL::VARCHAR AS granularity, NULL::TIMESTAMPTZ AS computed_at "
    "WHERE false"
)


def view_ddl() -> list[str]:
    return [f"CREATE OR REPLACE VIEW {name} AS {body.strip()}" for name, body in VIEWS.items()]
