"""Names and columns of the lake's tables, shared by the streaming job, the warehouse and the docs."""

from __future__ import annotations

BRONZE = "bronze_events"
SILVER = "silver_changes"
QUARANTINE = "quarantine"

# Kafka coordinates kept on every lake row, so any row can be traced to its message.
KAFKA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp")

# Order attributes lifted out of the document (post-image, or pre-image for deletes) into silver.
ORDER_ATTRIBUTES = ("customer_id", "status", "amount_raw", "currency")

# Columns silver adds to the envelope.
SILVER_EXTRA = ("event_time", "event_date", *ORDER_ATTRIBUTES, *KAFKA_COLUMNS, "batch_id", "ingested_at")
