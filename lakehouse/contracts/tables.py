"""Every table of the lake and the warehouse, defined once in the type vocabulary (contracts/types.py):
the streaming job writes the lake's from these, the warehouse creates its own from these, and the docs
name this module. Collection-specific columns come from the collections spec (collections.toml)."""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from lakehouse.contracts import types
from lakehouse.contracts.events import ENVELOPE_FIELDS
from lakehouse.contracts.types import Columns
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.config import Settings

BRONZE = "bronze_events"
SILVER = "silver_changes"
QUARANTINE = "quarantine"
LATE_EVENTS = "late_events"
AGGREGATES = "aggregates"
QUALITY_CHECKS = "quality_checks"
ORDER_LINES = "order_lines_enriched"
REVENUE_BY_CATEGORY = "revenue_by_category"
INVENTORY_ALERTS = "inventory_alerts"
CUSTOMER_SESSIONS = "customer_sessions"
LOOK_BACK_FLAGS = "look_back_flags"
WINDOWS = {"1m": "1 minute", "1h": "1 hour"}  # granularity label -> Spark window duration
CATEGORY_WINDOWS = {"5m": "5 minutes", "1h": "1 hour"}  # revenue_by_category's

# -- the lake --------------------------------------------------------------------------------------
# Kafka coordinates kept on every lake row, so any row can be traced to its message.
KAFKA_TYPES: Columns = (("kafka_topic", "string"), ("kafka_partition", "int"), ("kafka_offset", "long"),
                        ("kafka_timestamp", "timestamp"))
KAFKA_COLUMNS = tuple(name for name, _ in KAFKA_TYPES)
_WRITTEN: Columns = (("batch_id", "long"), ("ingested_at", "timestamp"))

# Bronze holds every message with why it is not in silver (null when it is): the quarantine table is its
# copy of the quarantined rows, made off the lake query's path (streaming/lake_copies.py).
BRONZE_COLUMNS: Columns = (*KAFKA_TYPES, ("kafka_key", "string"), ("raw_value", "string"), *_WRITTEN,
                           ("quarantine_reason", "string"))
QUARANTINE_COLUMNS: Columns = (*KAFKA_TYPES, ("kafka_key", "string"), ("raw_value", "string"),
                               ("quarantine_reason", "string"), *_WRITTEN)
LATE_EVENTS_COLUMNS: Columns = (("change_id", "string"), ("op", "string"), ("doc_id", "string"),
                                ("event_time", "timestamp"), *KAFKA_TYPES, *_WRITTEN, ("watermark", "timestamp"))
# Per micro-batch, collection, quality rule and event day: changes the rule judged and how many broke it.
QUALITY_CHECKS_COLUMNS: Columns = (("collection", "string"), ("rule", "string"), ("severity", "string"),
                                   ("event_date", "date"), ("checked", "long"), ("failed", "long"), *_WRITTEN)
# Per change a rule that looks back (transitions, references) flagged off the lake query's path
# (streaming/look_back.py): the rule and why.
LOOK_BACK_FLAGS_COLUMNS: Columns = (("change_id", "string"), ("collection", "string"), ("doc_id", "string"),
                                    ("key", "string"), ("rule", "string"), ("reason", "string"),
                                    ("event_date", "date"), *_WRITTEN)
# The windowed aggregates of orders' money (streaming/aggregates.py); event_date is the partition column.
AGGREGATES_COLUMNS: Columns = (
    ("window_start", "timestamp"), ("window_end", "timestamp"), ("status", "string"), ("order_count", "long"),
    ("revenue", "decimal(28,2)"), ("average_amount", "decimal(18,2)"), ("high_value_changes", "long"),
    ("granularity", "string"), ("computed_at", "timestamp"))
# Orders placed, one row per item, joined with the customer's and the product's attributes as the lake held
# them when the order arrived (streaming/enrichment.py); the order's amount is shared out over its items by
# quantity. first_in_category marks one line per order and category, so an aggregate can count orders.
ORDER_LINES_COLUMNS: Columns = (
    ("change_id", "string"), ("order_id", "string"), ("event_time", "timestamp"), ("customer_id", "string"),
    ("customer_segment", "string"), ("customer_country", "string"), ("sku", "string"), ("product_name", "string"),
    ("product_category", "string"), ("qty", "long"), ("line_revenue", "decimal(28,2)"), ("currency", "string"),
    ("first_in_category", "bool"), *_WRITTEN, ("event_date", "date"))
# Revenue of the orders placed per event-time window, product category and currency (streaming/aggregates.py).
REVENUE_BY_CATEGORY_COLUMNS: Columns = (
    ("window_start", "timestamp"), ("window_end", "timestamp"), ("category", "string"), ("currency", "string"),
    ("order_count", "long"), ("items", "long"), ("revenue", "decimal(28,2)"), ("granularity", "string"),
    ("computed_at", "timestamp"))
# One row per crossing of a stock threshold (streaming/inventory.py): level low, critical, out_of_stock, or
# restocked when the product is back above the low threshold; event_time is the stock change's.
INVENTORY_ALERTS_COLUMNS: Columns = (
    ("product_id", "string"), ("name", "string"), ("stock", "long"), ("threshold", "long"), ("level", "string"),
    ("previous_level", "string"), ("event_time", "timestamp"), ("change_id", "string"), ("computed_at", "timestamp"))
# Per customer, sessions of order changes no further apart than SESSION_GAP (streaming/sessions.py); written
# once the watermark has passed the session's end, so every row is final.
CUSTOMER_SESSIONS_COLUMNS: Columns = (
    ("customer_id", "string"), ("session_start", "timestamp"), ("session_end", "timestamp"),
    ("last_activity", "timestamp"), ("changes", "long"), ("orders_placed", "long"), ("amount_spent", "decimal(28,2)"),
    ("currency", "string"), ("computed_at", "timestamp"))


# Silver's mark of a late change: the watermark it arrived behind (null when on time); late_events is
# the copy of the marked rows, made off the lake query's path.
LATE_WATERMARK = "late_watermark"


def silver_columns(attributes: Columns) -> Columns:
    """Silver: the envelope, the event time, every collection's typed columns (`attributes`, from the
    spec), unknown fields, Kafka coordinates, the batch and the late mark."""
    return (*ENVELOPE_FIELDS, ("event_time", "timestamp"), ("event_date", "date"), *attributes,
            ("extra", "string"), *KAFKA_TYPES, *_WRITTEN, (LATE_WATERMARK, "timestamp"))


def attribute_columns(settings: Settings) -> Columns:
    """The typed columns silver carries: those of every collection the spec describes or COLLECTIONS names."""
    spec = settings.spec
    return spec.silver_columns(tuple(dict.fromkeys((*spec.collections, *settings.collections))))


def silver_schema(settings: Settings) -> pa.Schema:
    """Silver as Arrow types (what the streaming job writes), for the configured collections."""
    return lake_schemas(attribute_columns(settings))[SILVER]


# The columns whose min/max the lake query's tables keep per file in the Delta log (data skipping): those
# readers filter by. Delta's default is the first 32 columns, and collecting them was 40% of writing a
# 100,000-row batch of silver (1.51 s against 0.90 s; bronze 0.97 s against 0.65 s), its long JSON texts
# the dearest. The other tables keep Delta's default (their batches are small).
STATS_COLUMNS: dict[str, tuple[str, ...]] = {
    BRONZE: ("kafka_topic", "kafka_partition", "kafka_offset", "batch_id"),
    SILVER: ("collection", "op", "cluster_time_s", "event_date", "batch_id"),
}


def table_properties(name: str) -> dict[str, str]:
    """The lake table's own Delta properties (besides the lake's common ones, streaming/lake_writer.py)."""
    stats = STATS_COLUMNS.get(name)
    return {"delta.dataSkippingStatsColumns": ",".join(stats)} if stats else {}


@cache
def lake_schemas(attributes: Columns) -> dict[str, pa.Schema]:
    """Every Delta table of the lake and its Arrow schema; the streaming job creates them all, empty, at its
    first start, so another engine can read each from the beginning."""
    return {
        BRONZE: types.arrow_schema(BRONZE_COLUMNS), SILVER: types.arrow_schema(silver_columns(attributes)),
        QUARANTINE: types.arrow_schema(QUARANTINE_COLUMNS), LATE_EVENTS: types.arrow_schema(LATE_EVENTS_COLUMNS),
        AGGREGATES: types.arrow_schema(AGGREGATES_COLUMNS), QUALITY_CHECKS: types.arrow_schema(QUALITY_CHECKS_COLUMNS),
        ORDER_LINES: types.arrow_schema(ORDER_LINES_COLUMNS),
        REVENUE_BY_CATEGORY: types.arrow_schema(REVENUE_BY_CATEGORY_COLUMNS),
        INVENTORY_ALERTS: types.arrow_schema(INVENTORY_ALERTS_COLUMNS),
        CUSTOMER_SESSIONS: types.arrow_schema(CUSTOMER_SESSIONS_COLUMNS),
        LOOK_BACK_FLAGS: types.arrow_schema(LOOK_BACK_FLAGS_COLUMNS),
    }


# -- the warehouse ---------------------------------------------------------------------------------
# Source order of a change: cluster time, then position among changes at that cluster time.
SOURCE_ORDER = ("cluster_time_s", "cluster_time_inc", "txn_op_index")
# Envelope/silver columns every collection's table of changes keeps: the change's identity, then (after
# the collection's key column, key_columns) its source order and content; then its own columns, loaded_at.
CHANGE_IDENTITY: Columns = (("change_id", "string"), ("op", "string"), ("collection", "string"), ("doc_id", "string"))
CHANGE_CONTENT: Columns = (
    ("cluster_time_s", "long"), ("cluster_time_inc", "long"), ("txn_op_index", "long"),
    ("event_time", "timestamp"), ("wall_time_ms", "long"), ("resume_token", "string"), ("document", "string"),
    ("document_digest", "string"),
)
CHANGE_COLUMNS: Columns = (*CHANGE_IDENTITY, *CHANGE_CONTENT)
# Silver columns a lake written before they existed lacks: the warehouse loads them as nulls.
OPTIONAL_SILVER = frozenset({"document_digest"})
# NOT NULL per column of the warehouse's tables (the rest may be null). change_id (changes) and doc_id
# (current) are unique, kept so by the loader's apply: no PRIMARY KEY index, whose upkeep was half a load.
_CONSTRAINTS = {"change_id": "NOT NULL", "op": "NOT NULL", "collection": "NOT NULL", "doc_id": "NOT NULL",
                "cluster_time_s": "NOT NULL", "cluster_time_inc": "NOT NULL", "txn_op_index": "NOT NULL",
                "loaded_at": "NOT NULL"}
_CURRENT_CONSTRAINTS = {"doc_id": "NOT NULL", "document": "NOT NULL", "last_change_id": "NOT NULL",
                        "cluster_time_s": "NOT NULL", "cluster_time_inc": "NOT NULL", "txn_op_index": "NOT NULL"}


def key_columns(spec: CollectionSpec) -> Columns:
    """The column holding a collection's Kafka key (named by the spec), or none when that is the _id."""
    return ((spec.key_column, "string"),) if spec.key_column else ()


def changes_columns(spec: CollectionSpec) -> Columns:
    """A collection's table of every change it had (fact_<...>_changes)."""
    return (*CHANGE_IDENTITY, *key_columns(spec), *CHANGE_CONTENT, *spec.columns, ("kafka_topic", "string"),
            ("kafka_partition", "int"), ("kafka_offset", "long"), ("loaded_at", "timestamp"))


def current_columns(spec: CollectionSpec) -> Columns:
    """A collection's current state: one row per live document, the newest version in source order."""
    return (("doc_id", "string"), *key_columns(spec), *spec.columns, ("document", "string"),
            ("document_digest", "string"), ("last_change_id", "string"), ("cluster_time_s", "long"),
            ("cluster_time_inc", "long"), ("txn_op_index", "long"), ("updated_at", "timestamp"))


LOAD_STATE_COLUMNS: Columns = (("source", "string"), ("delta_version", "long"), ("rows_loaded", "long"),
                               ("loaded_at", "timestamp"))
META_COLUMNS: Columns = (("key", "string"), ("value", "string"))


def duckdb_table(name: str, columns: Columns, constraints: dict[str, str] | None = None) -> str:
    """CREATE TABLE IF NOT EXISTS in DuckDB's types."""
    constraints = constraints or {}
    body = ",\n  ".join(f"{types.ident(col)} {types.duckdb(kind)}{' ' + constraints[col] if col in constraints else ''}"
                        for col, kind in columns)
    return f"CREATE TABLE IF NOT EXISTS {types.ident(name)} (\n  {body}\n)"


def warehouse_tables_of(collections: tuple[CollectionSpec, ...]) -> dict[str, str]:
    """Table name -> DDL for the warehouse of these collections."""
    ddl = {
        "load_state": duckdb_table("load_state", LOAD_STATE_COLUMNS,
                                   {"source": "PRIMARY KEY", "delta_version": "NOT NULL", "rows_loaded": "NOT NULL",
                                    "loaded_at": "NOT NULL"}),
        "warehouse_meta": duckdb_table("warehouse_meta", META_COLUMNS, {"key": "PRIMARY KEY", "value": "NOT NULL"}),
    }
    for collection in collections:
        ddl[collection.changes] = duckdb_table(collection.changes, changes_columns(collection), _CONSTRAINTS)
        ddl[collection.table] = duckdb_table(collection.table, current_columns(collection), _CURRENT_CONSTRAINTS)
    return ddl
