"""The one module that talks to Kafka (kafka-python), so the client can be swapped in one place."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from lakehouse.config import Settings
from lakehouse.errors import kafka_unreachable

log = logging.getLogger(__name__)


def require_broker(settings: Settings, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when no bootstrap server accepts a connection; kafka-python
    would otherwise retry for a minute and end in a generic timeout."""
    failures = []
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
            return
        except (OSError, ValueError) as exc:
            failures.append(f"{server.strip()}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
    raise kafka_unreachable(settings, "; ".join(failures))


def consumer(settings: Settings, **options: object) -> KafkaConsumer:
    """A consumer for metadata and offsets (no group, no commits)."""
    require_broker(settings)
    return KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False, **options)


def ensure_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create the pipeline's topics; the broker's auto-creation is never relied on."""
    require_broker(settings)
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
    require_broker(settings)
    return KafkaProducer(**options)


def partitions_of(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    reader = consumer(settings)
    try:
        tps = [tp for topic in topics for tp in partitions_of(reader, topic)]
        return {(tp.topic, tp.partition): off for tp, off in reader.end_offsets(tps).items()} if tps else {}
    finally:
        reader.close()


def read_values(settings: Settings, ends: dict[tuple[str, int], int], newest: int | None = None) -> Iterator[bytes]:
    """The values of the records of the given partitions up to their end offsets (`ends`, from
    end_offsets): all of them, or each partition's `newest` ones. For small topics such as the
    dead-letter topic."""
    if not sum(ends.values()):
        return
    reader = consumer(settings, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, partition) for topic, partition in ends]
        reader.assign(parts)
        begins = reader.beginning_offsets(parts)
        for tp in parts:
            end = ends[(tp.topic, tp.partition)]
            reader.seek(tp, begins[tp] if newest is None else max(begins[tp], end - newest))
        for record in reader:
            if record.offset < ends[(record.topic, record.partition)]:
                yield record.value
            if all(reader.position(tp) >= ends[(tp.topic, tp.partition)] for tp in parts):
                break
    finally:
        reader.close()
