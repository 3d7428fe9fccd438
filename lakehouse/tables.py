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
