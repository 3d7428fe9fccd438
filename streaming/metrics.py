"""The streaming job's Prometheus metrics, counted on its driver and served by it
(lakehouse/core/metrics.serve)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAM_ROWS = Counter("lakehouse_stream_rows",
                      "Rows of the lake query by outcome: input (read from Kafka), silver, quarantined, late "
                      "(behind the watermark, kept in silver), flagged (broke a rule of severity flag)",
                      ["outcome"])
QUALITY_CHECKED = Counter("lakehouse_stream_quality_checked", "Changes each quality rule judged", ["rule"])
QUALITY_FAILED = Counter("lakehouse_stream_quality_failed", "Changes that broke each quality rule", ["rule"])
STREAM_BATCH_SECONDS = Histogram("lakehouse_stream_batch_seconds", "Duration of each query's micro-batch",
                                 ["query"], buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300))
STREAM_QUERY_ROWS = Counter("lakehouse_stream_query_input_rows", "Rows each streaming query read", ["query"])
STREAM_WATERMARK = Gauge("lakehouse_stream_watermark_timestamp_seconds",
                         "The lake query's event-time watermark (changes older than it count as late)")
STREAM_LAST_BATCH = Gauge("lakehouse_stream_last_batch_timestamp_seconds",
                          "When each query last completed a micro-batch", ["query"])
STREAM_FAILURES = Counter("lakehouse_stream_query_failures", "Streaming query failures (each restarted)")
STREAM_DATA_LOSS = Counter("lakehouse_stream_kafka_lost_records",
                           "Kafka records the streaming job found lost under it (streaming/kafka_losses.py)")
STREAM_LOSS_WATCH_ERRORS = Counter("lakehouse_stream_loss_watch_errors",
                                  "Looks of the Kafka loss watch that Kafka did not answer (tried again)")
STREAM_KAFKA_WAITS = Counter("lakehouse_stream_kafka_waits",
                             "Tries to reach Kafka at start that found it away or without the topics (the job "
                             "waits, then starts)")
