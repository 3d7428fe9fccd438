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
