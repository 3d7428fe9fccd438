"""The producer's Prometheus metrics, counted in the producer process and served by it
(lakehouse/core/metrics.serve)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
PRODUCER_SERVER_WAITS = Counter("lakehouse_producer_server_waits",
                                "Times the producer found MongoDB or Kafka away and waited to try again")
