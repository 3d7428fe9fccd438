"""The pipeline's Prometheus metrics, defined once (names, help, labels), on prometheus_client.

Each long-running service (producer, streaming job, loader) counts what it does in the process that
does it and serves its own /metrics (`serve`); Prometheus adds the `job` label from its scrape config
(infra/prometheus). Counters start at 0 when a service starts, which `rate()`/`increase()` handle. What
no single service knows (Kafka lag against the lake's checkpoint, end-to-end freshness, the last
reconcile) is served by the monitor, `lakehouse metrics --serve` (lakehouse/app/status.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from lakehouse.core.config import Settings

log = logging.getLogger(__name__)

SERVICES = ("producer", "streaming", "loader", "monitor")

# -- producer --------------------------------------------------------------------------------------
PRODUCER_EVENTS = Counter("lakehouse_producer_events", "Change events Kafka acknowledged (snapshot copies included)",
                          ["topic"])
PRODUCER_DEAD_LETTERED = Counter("lakehouse_producer_dead_lettered", "Events sent to the dead-letter topic")
PRODUCER_KAFKA_LOSSES = Counter("lakehouse_producer_kafka_losses",
                                "Times the broker was found holding fewer records than it had acknowledged")
PRODUCER_LAST_CHANGE = Gauge("lakehouse_producer_last_change_timestamp_seconds",
                             "Cluster time of the newest change Kafka acknowledged")
PRODUCER_TOKEN_SAVED = Gauge("lakehouse_producer_token_saved_timestamp_seconds",
                             "When the resume token was last persisted (after Kafka's acknowledgement)")
PRODUCER_PUBLISH_SECONDS = Histogram("lakehouse_producer_publish_seconds",
                                     "Publishing one batch of events until Kafka acknowledged all of it",
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# -- streaming -------------------------------------------------------------------------------------
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

# -- loader ----------------------------------------------------------------------------------------
LOADER_CHANGES = Counter("lakehouse_loader_changes", "New changes loaded into the warehouse", ["collection"])
LOADER_ROWS_READ = Counter("lakehouse_loader_rows_read", "Silver rows the loader read (duplicates included)")
LOADER_LOAD_SECONDS = Histogram("lakehouse_loader_load_seconds", "Duration of each warehouse load",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
LOADER_VERSION = Gauge("lakehouse_loader_silver_version", "Silver Delta version the warehouse has loaded")
LOADER_NEWEST_CHANGE = Gauge("lakehouse_loader_newest_change_timestamp_seconds",
                             "Cluster time of the newest change in the warehouse")
LOADER_REPAIRED = Counter("lakehouse_loader_repaired", "Documents a reconcile sent for repair through Kafka")
LOADER_LOCKED = Counter("lakehouse_loader_locked", "Loads that waited because a reader held the warehouse")


def serve(settings: Settings, service: str) -> Any:
    """Serve this process's metrics at http://METRICS_HOST:<the service's port>/metrics; port 0 means not
    at all. A port in use is a warning, never a reason for the service itself to stop. Returns the server
    (or None)."""
    port, host = settings.metrics_port(service), settings.metrics_host
    if not port:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("%s metrics not served: cannot listen on %s:%d (%s); set %s_METRICS_PORT to a free port",
                    service, host, port, exc, service.upper())
        return None
    log.info("%s metrics at http://%s:%d/metrics", service, host, port)
    return server
