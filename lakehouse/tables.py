"""Names and columns of the lake's tables, shared by the streaming job, the warehouse and the docs."""

from __future__ import annotations

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


def silver_arrow_schema() -> object:
    """Silver as Arrow types (what the streaming job writes), for tests and benches that fake a lake."""
    import pyarrow as pa

    from lakehouse.events import ENVELOPE_FIELDS

    arrow = {
        "string": pa.string(), "long": pa.int64(), "int": pa.int32(),  # the envelope's vocabulary
        "STRING": pa.string(), "INT": pa.int32(), "BIGINT": pa.int64(), "BOOLEAN": pa.bool_(), "DATE": pa.date32(),
        "TIMESTAMP": pa.timestamp("us", tz="UTC"), "DECIMAL(18, 2)": pa.decimal128(18, 2),  # Spark SQL's
    }
    return pa.schema([(name, arrow[kind]) for name, kind in (*ENVELOPE_FIELDS, *SILVER_COLUMNS)])
