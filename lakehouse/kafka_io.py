"""The one module that talks to Kafka (kafka-python), so the client can be swapped in one place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from lakehouse.config import Settings

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create the pipeline's topics; the broker's auto-creation is never relied on."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="lakehouse-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(t, settings.kafka_partitions, settings.kafka_replication_factor)
            for t in topics
            if t not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


def idempotent_producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """acks=all + idempotence + bounded in-flight keeps per-partition order across retries."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 5,
        "retries": 2**31 - 1,
        "retry_backoff_ms": 200,
        "request_timeout_ms": 30_000,
        "client_id": "lakehouse-producer",
    }
    options.update(overrides)
    return KafkaProducer(**options)


def partitions_of(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [tp for topic in topics for tp in partitions_of(consumer, topic)]
        return {(tp.topic, tp.partition): off for tp, off in consumer.end_offsets(tps).items()} if tps else {}
    finally:
        consumer.close()
