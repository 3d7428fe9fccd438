"""The warehouse's DuckDB tables and views, for the collections the spec describes.

Per collection: a table of every change it had (`fact_<...>_changes`) and its current state (one row
per live document, derived by ordered apply), plus a `<table>_history` view (SCD type 2). The tables'
columns are lakehouse/contracts/tables.py's; this module turns them into DDL and writes the views.
Orders (a collection with money, customer_id and status) also get the analytics views. Everything but
the tables is a view, so it can never disagree with them. The file's format (`WAREHOUSE_FORMAT`, release
1's v1; lakehouse/contracts/formats.py) is stored in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.contracts import tables, types
from lakehouse.contracts.tables import SOURCE_ORDER
from lakehouse.contracts.types import ident
from lakehouse.core.collections import ORDERS, CollectionSpec
from lakehouse.core.config import Settings

# The warehouse format (warehouse_meta's format_version; migrate.WAREHOUSE_FORMAT): 1 in release 1, 2 in release 2
# (each collection's key column named by the spec instead of `order_id` everywhere).
WAREHOUSE_VERSION = 2

_ORDER = ", ".join(SOURCE_ORDER)
_CREATED = "try_cast(json_extract_string(document, '$.created_at.$date') AS TIMESTAMPTZ)"


def cutoff(changes: str) -> str:
    """The newest complete snapshot of a collection (snapshot_end): a document whose latest change is
    older was deleted meanwhile. One row (cluster_time_s, cluster_time_inc); (0, 0) when there is none."""
    return (f"(SELECT cluster_time_s, cluster_time_inc FROM {ident(changes)} WHERE op = 'snapshot_end' "
            "UNION ALL SELECT 0, 0 ORDER BY 1 DESC, 2 DESC LIMIT 1)")


def history_view(spec: CollectionSpec) -> str:
    key = "".join(f"v.{ident(name)}, " for name, _ in tables.key_columns(spec))
    own = "".join(f"v.{ident(name)}, " for name, _ in spec.columns)
    return f"""
WITH cutoff AS {cutoff(spec.changes)},
versions AS (
  SELECT *, lead(to_timestamp(cluster_time_s)) OVER w AS next_version_at,
         lead(change_id) OVER w IS NULL AS is_latest
  FROM {ident(spec.changes)}
  WHERE op <> 'snapshot_end' AND (op = 'delete' OR document IS NOT NULL)
  WINDOW w AS (PARTITION BY doc_id ORDER BY {_ORDER})
)
SELECT v.doc_id, {key}v.change_id, v.op, {own}v.document,
       v.cluster_time_s, v.cluster_time_inc, v.txn_op_index,
       to_timestamp(v.cluster_time_s) AS valid_from,
       CASE WHEN NOT v.is_latest THEN v.next_version_at
            WHEN (v.cluster_time_s, v.cluster_time_inc) < (c.cluster_time_s, c.cluster_time_inc)
            THEN to_timestamp(c.cluster_time_s) END AS valid_to,
       v.op = 'delete' AS is_tombstone,
       v.is_latest AND v.op <> 'delete'
         AND (v.cluster_time_s, v.cluster_time_inc) >= (c.cluster_time_s, c.cluster_time_inc) AS is_current
FROM versions v, cutoff c"""


def _is_orders_like(spec: CollectionSpec) -> bool:
    names = {name for name, _ in spec.columns}
    return spec.money is not None and {"customer_id", "status"} <= names


def analytics_views(spec: CollectionSpec) -> dict[str, str]:
    """Revenue and order analytics over a collection with money, customer_id and status. Revenue counts
    current orders that are not cancelled, per currency (amounts in different currencies are never added
    together); orders with an unreadable amount count as orders but add no revenue."""
    table, history = ident(spec.table), ident(spec.history)
    order_id = ident(spec.key_column) if spec.key_column else "doc_id"

    def revenue_per(unit: str) -> str:
        return f"""
SELECT date_trunc('{unit}', {_CREATED}) AS {unit}, amount_currency AS currency, count(*) AS orders,
       sum(amount) AS revenue, avg(amount)::DECIMAL(18, 2) AS average_amount,
       count(*) FILTER (WHERE is_high_value) AS high_value_orders
FROM {table} WHERE status IS DISTINCT FROM 'cancelled' GROUP BY ALL"""

    return {
        "revenue_daily": revenue_per("day"),
        "revenue_hourly": revenue_per("hour"),
        "orders_by_status": f"""
SELECT status, count(*) AS orders, count(*) FILTER (WHERE is_high_value) AS high_value_orders,
       count(*) FILTER (WHERE amount IS NULL) AS orders_without_amount
FROM {table} GROUP BY ALL""",
        "high_value_orders": f"""
SELECT {order_id} AS order_id, customer_id, status, amount, amount_currency AS currency, {_CREATED} AS created_at,
       updated_at
FROM {table} WHERE is_high_value""",
        "top_customers": f"""
WITH per_customer AS (
  SELECT customer_id, amount_currency AS currency, count(*) AS orders, sum(amount) AS revenue
  FROM {table} WHERE status IS DISTINCT FROM 'cancelled' AND customer_id IS NOT NULL
  GROUP BY customer_id, amount_currency
)
SELECT *, rank() OVER (PARTITION BY currency ORDER BY revenue DESC NULLS LAST) AS rank_in_currency
FROM per_customer""",
        "status_funnel": f"""
WITH steps AS (
  SELECT doc_id, CASE WHEN is_tombstone THEN '(deleted)' ELSE coalesce(status, '(none)') END AS to_status,
         coalesce(lag(CASE WHEN is_tombstone THEN '(deleted)' ELSE coalesce(status, '(none)') END)
                  OVER (PARTITION BY doc_id ORDER BY {_ORDER}), '(new)') AS from_status
  FROM {history}
)
SELECT from_status, to_status, count(*) AS transitions, count(DISTINCT doc_id) AS orders
FROM steps WHERE from_status <> to_status GROUP BY ALL""",
    }


# Tables the streaming job writes to the lake (Delta) that the warehouse reads in place: the loader
# re-points each view at the table's live files on every load. Until then each is empty with its columns.
AGGREGATES_VIEW = "streaming_aggregates"
QUALITY_VIEW = "quality_checks"
LAKE_VIEWS: dict[str, tuple[str, types.Columns]] = {
    AGGREGATES_VIEW: (tables.AGGREGATES, tables.AGGREGATES_COLUMNS),
    QUALITY_VIEW: (tables.QUALITY_CHECKS, tables.QUALITY_CHECKS_COLUMNS),
    tables.ORDER_LINES: (tables.ORDER_LINES, tables.ORDER_LINES_COLUMNS),
    tables.REVENUE_BY_CATEGORY: (tables.REVENUE_BY_CATEGORY, tables.REVENUE_BY_CATEGORY_COLUMNS),
    tables.INVENTORY_ALERTS: (tables.INVENTORY_ALERTS, tables.INVENTORY_ALERTS_COLUMNS),
    tables.CUSTOMER_SESSIONS: (tables.CUSTOMER_SESSIONS, tables.CUSTOMER_SESSIONS_COLUMNS),
    tables.LOOK_BACK_FLAGS: (tables.LOOK_BACK_FLAGS, tables.LOOK_BACK_FLAGS_COLUMNS),
}


def empty_select(columns: types.Columns) -> str:
    return "SELECT " + ", ".join(f"NULL::{types.duckdb(kind)} AS {name}" for name, kind in columns) + " WHERE false"



# Per event day, collection and rule: the changes judged, those that broke it, and the share that passed.
DATA_QUALITY_VIEW = f"""
SELECT event_date AS day, collection, rule, severity, sum(checked) AS checked, sum(failed) AS failed,
       round(1 - sum(failed) / sum(checked), 4) AS score
FROM {QUALITY_VIEW} GROUP BY ALL"""


def open_references_view(specs: tuple[CollectionSpec, ...]) -> str | None:
    """Current documents whose references rule still fails against the referenced collection's current
    table: a flag at arrival is re-checked here, so a customer that arrived later clears it."""
    tables_of = {spec.name: spec.table for spec in specs}
    parts = []
    for spec in specs:
        for rule in spec.rules:
            if rule.kind != "references" or rule.references not in tables_of:
                continue
            path = "$." + rule.field.replace("[]", "[*]")
            value = (f"unnest(json_extract(document, '{path}'))" if "[]" in rule.field
                     else f"json_extract(document, '{path}')")
            key = ident(spec.key_column) if spec.key_column else "doc_id"
            parts.append(f"""
SELECT '{rule.name}' AS rule, '{spec.name}' AS collection, doc_id, key, '{rule.references}' AS referenced,
       ref AS missing_id
FROM (SELECT doc_id, {key} AS key, {value}::VARCHAR AS ref FROM {ident(spec.table)})
WHERE ref IS NOT NULL AND ref <> 'null' AND ref NOT IN (SELECT doc_id FROM {ident(tables_of[rule.references])})""")
    return "\nUNION ALL".join(parts) or None


@dataclass(frozen=True)
class WarehouseSchema:
    """The warehouse of the captured collections: table DDL, views, and which collection owns what."""

    collections: tuple[CollectionSpec, ...]

    @classmethod
    def of(cls, settings: Settings) -> WarehouseSchema:
        return cls(tuple(settings.collection(name) for name in settings.collections))

    @property
    def tables(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Table name -> columns (vocabulary types), for the check of an existing file."""
        found: dict[str, tuple[tuple[str, str], ...]] = {"load_state": tables.LOAD_STATE_COLUMNS,
                                                         "warehouse_meta": tables.META_COLUMNS}
        for spec in self.collections:
            found[spec.changes] = tables.changes_columns(spec)
            found[spec.table] = tables.current_columns(spec)
        return found

    def ddl(self) -> list[str]:
        return list(tables.warehouse_tables_of(self.collections).values())

    def views(self) -> dict[str, str]:
        views = {spec.history: history_view(spec) for spec in self.collections}
        views["data_quality"] = DATA_QUALITY_VIEW
        open_references = open_references_view(self.collections)
        if open_references:
            views["quality_open_references"] = open_references
        for spec in self.collections:
            if _is_orders_like(spec) and spec.table == ORDERS:
                views.update(analytics_views(spec))
        return views

    def view_ddl(self) -> list[str]:
        return [f"CREATE OR REPLACE VIEW {ident(name)} AS {body.strip()}" for name, body in self.views().items()]

    def fingerprint(self) -> str:
        """Of every statement that makes this schema: a file stamped with it needs none of them again."""
        import hashlib

        text = "\n".join([str(WAREHOUSE_VERSION), *self.ddl(), *self.view_ddl(),
                          *(empty_select(columns) for _, columns in LAKE_VIEWS.values())])
        return hashlib.sha256(text.encode()).hexdigest()

    def owner(self, name: str) -> CollectionSpec | None:
        return next((s for s in self.collections if s.name == name), None)


def load_source(spec: CollectionSpec) -> str:
    """A collection's row in load_state: the silver version its tables are loaded up to."""
    return f"{tables.SILVER}:{spec.name}"
