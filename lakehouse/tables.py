"""Names and columns of the lake's tables, shared by the streaming job, the warehouse and the docs."""

from __future__ import annotations

from functools import cache

BRONZE = "bronze_events"
SILVER = "silver_changes"
QUARANTINE = "quarantine"
LATE_EVENTS = "late_events"
AGGREGATES = "aggregates"
WINDOWS = {"1m": "1 minute", "1h": "1 hour"}  # granularity label -> Spark window duration

# Kafka coordinates kept on every lake row, so any row can be traced to its message.
KAFKA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp")

# Order attributes lifted out of the document (post-image, or pre-image for deletes) into silver.
ORDER_ATTRIBUTES = ("customer_id", "status", "amount_raw", "currency")

# Typed money columns silver derives from amount_raw (streaming/udfs.py).
MONEY_COLUMNS = ("amount", "amount_currency", "amount_error", "is_high_value")

# Silver = the envelope fields (lakehouse/events.py) followed by these, in this order (Spark SQL types).
# The streaming job builds silver from this list and the aggregates read silver's Parquet copy with it.
_SILVER_TYPES = {
    "event_time": "TIMESTAMP", "event_date": "DATE", "customer_id": "STRING", "status": "STRING",
    "amount_raw": "STRING", "currency": "STRING", "amount": "DECIMAL(18, 2)", "amount_currency": "STRING",
    "amount_error": "STRING", "is_high_value": "BOOLEAN", "extra": "STRING", "kafka_topic": "STRING",
    "kafka_partition": "INT", "kafka_offset": "BIGINT", "kafka_timestamp": "TIMESTAMP", "batch_id": "BIGINT",
    "ingested_at": "TIMESTAMP",
}
SILVER_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, _SILVER_TYPES[name])
    for name in ("event_time", "event_date", *ORDER_ATTRIBUTES, *MONEY_COLUMNS, "extra", *KAFKA_COLUMNS,
                 "batch_id", "ingested_at")
)


# The other lake tables' columns (Spark SQL types), in the order they are written.
_KAFKA_TYPES = (("kafka_topic", "STRING"), ("kafka_partition", "INT"), ("kafka_offset", "BIGINT"),
                ("kafka_timestamp", "TIMESTAMP"))
_WRITTEN = (("batch_id", "BIGINT"), ("ingested_at", "TIMESTAMP"))
BRONZE_COLUMNS: tuple[tuple[str, str], ...] = (*_KAFKA_TYPES, ("kafka_key", "STRING"), ("raw_value", "STRING"),
                                               *_WRITTEN)
QUARANTINE_COLUMNS: tuple[tuple[str, str], ...] = (*_KAFKA_TYPES, ("kafka_key", "STRING"), ("raw_value", "STRING"),
                                                   ("quarantine_reason", "STRING"), *_WRITTEN)
LATE_EVENTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("change_id", "STRING"), ("op", "STRING"), ("doc_id", "STRING"), ("event_time", "TIMESTAMP"), *_KAFKA_TYPES,
    *_WRITTEN, ("watermark", "TIMESTAMP"))
AGGREGATES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("window_start", "TIMESTAMP"), ("window_end", "TIMESTAMP"), ("status", "STRING"), ("order_count", "BIGINT"),
    ("revenue", "DECIMAL(28, 2)"), ("average_amount", "DECIMAL(18, 2)"), ("high_value_changes", "BIGINT"),
    ("granularity", "STRING"), ("computed_at", "TIMESTAMP"))

_ARROW = {
    "string": "string", "long": "int64", "int": "int32",  # the envelope's vocabulary (lakehouse/events.py)
    "STRING": "string", "INT": "int32", "BIGINT": "int64", "BOOLEAN": "bool_", "DATE": "date32",
}


def arrow_schema(columns: tuple[tuple[str, str], ...]) -> object:
    """Columns with Spark SQL (or envelope) types as an Arrow schema: what the streaming job writes."""
    import pyarrow as pa

    def arrow(kind: str) -> object:
        if kind == "TIMESTAMP":
            return pa.timestamp("us", tz="UTC")
        if kind.startswith("DECIMAL("):
            precision, scale = (int(n) for n in kind[8:-1].split(","))
            return pa.decimal128(precision, scale)
        return getattr(pa, _ARROW[kind])()

    return pa.schema([(name, arrow(kind)) for name, kind in columns])


def silver_arrow_schema() -> object:
    """Silver as Arrow types (what the streaming job writes)."""
    from lakehouse.events import ENVELOPE_FIELDS

    return arrow_schema((*ENVELOPE_FIELDS, *SILVER_COLUMNS))


@cache
def lake_schemas() -> dict[str, object]:
    """Every Delta table of the lake and its Arrow schema; the streaming job creates them all, empty, at its
    first start, so another engine can read each from the beginning."""
    return {
        BRONZE: arrow_schema(BRONZE_COLUMNS), SILVER: silver_arrow_schema(),
        QUARANTINE: arrow_schema(QUARANTINE_COLUMNS), LATE_EVENTS: arrow_schema(LATE_EVENTS_COLUMNS),
        AGGREGATES: arrow_schema(AGGREGATES_COLUMNS),
    }
