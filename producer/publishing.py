"""Publishing change events to Kafka (acks=all, idempotent) and knowing what Kafka holds.

A batch is sent and every acknowledgement awaited. A transient failure retries the rest of the batch
(same change_ids) with backoff, giving way to a stop request; a record the broker refuses, or one over
its size limit, goes to the dead-letter topic with the reason; any other refusal stops the producer
with the event named. Each partition's acknowledged end is kept, so a broker found holding fewer
records than it acknowledged (or acknowledging an offset twice) raises KafkaDataLost, which names the
newest journalled checkpoint the broker still fully holds to publish again from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lakehouse.adapters.kafka import Ack, BrokerForgot, KafkaRefused, Publisher, end_offsets, publisher
from lakehouse.contracts import events
from lakehouse.contracts.positions import partition_key
from lakehouse.core.config import Settings
from lakehouse.core.errors import Permanent, Transient
from producer import metrics
from producer.checkpoint import Checkpoint, FileCheckpointStore, shortfall

log = logging.getLogger(__name__)


class KafkaDataLost(Transient):
    """The broker holds fewer records than it acknowledged: publish again from `rewind_to`
    (None: no journalled checkpoint is still fully held, so copy everything again)."""

    def __init__(self, message: str, rewind_to: Checkpoint | None, held: dict[str, int]) -> None:
        super().__init__(message)
        self.rewind_to = rewind_to
        self.held = held


class Stopped(Exception):
    """A stop was asked while a batch was not yet acknowledged: its token is not saved."""


class PublishFailed(Permanent, RuntimeError):
    """Kafka refused a batch for a reason retrying cannot fix; the message names the event and what to do."""


@dataclass
class Outgoing:
    topic: str
    key: bytes
    value: bytes
    what: str = ""  # names the event in errors: collection, _id, change_id


@dataclass
class ListenerStats:
    published: int = 0
    dead_lettered: int = 0
    snapshots: int = 0
    resnapshots: int = 0  # times the token was lost and everything was copied again
    kafka_losses: int = 0  # times the broker was found holding fewer records than it acknowledged
    republished_from_journal: int = 0  # of which were repaired by publishing again from a checkpoint


def describe(envelope: Mapping[str, Any] | None) -> str:
    """An event in words, for errors: collection, _id, change_id."""
    if not envelope:
        return "an event"
    doc_id = str(envelope.get("doc_id"))
    return (f"the {envelope.get('op')} of {envelope.get('db')}.{envelope.get('collection')} _id "
            f"{doc_id[:80]}{'...' if len(doc_id) > 80 else ''} (change_id {envelope.get('change_id')})")


class EventPublisher:
    """The producer's side of Kafka: records made from envelopes, sent, acknowledged and counted."""

    def __init__(self, settings: Settings, stats: ListenerStats, store: FileCheckpointStore,
                 stopping: Callable[[], bool], kafka: Publisher | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.store = store
        self.stopping = stopping
        self.kafka = kafka if kafka is not None else publisher(settings)
        # "topic:partition" -> offset after the last record Kafka acknowledged (collection topics).
        self.acked: dict[str, int] = {}

    def close(self) -> None:
        self.kafka.close(timeout=10)

    # -- records ---------------------------------------------------------------------------------
    def outgoing(self, topic: str, envelope: Mapping[str, Any], original: Any) -> list[Outgoing]:
        value = events.encode(envelope)
        key = events.kafka_key(envelope)
        size = Publisher.record_size(key, value)
        limit = self.kafka.max_request_size
        if size > limit:
            return [self.dead_letter(topic, original, f"record of {size} bytes (key, value and overhead) exceeds "
                                     f"max_request_size {limit}", key=key.decode(), envelope=envelope, size=size)]
        return [Outgoing(topic, key, value, describe(envelope))]

    def dead_letter(self, topic: str, original: Any, reason: str, key: str | None = None,
                    envelope: Mapping[str, Any] | None = None, size: int | None = None) -> Outgoing:
        self.stats.dead_lettered += 1
        metrics.PRODUCER_DEAD_LETTERED.inc()
        if key is None and isinstance(original, Mapping):
            key = events.doc_id_text(original.get("documentKey") or {"_id": original.get("_id")})
        key = events.bounded_key(key or "unknown").decode()
        identity = {name: (envelope or {}).get(name) for name in ("collection", "doc_id", "change_id", "op")}
        log.error("dead-lettering %s for key %s on %s: %s", describe(envelope) if envelope else "an event", key[:80],
                  topic, reason)
        body = {"reason": reason, "topic": topic, "key": key, **identity, "size": size,
                "original": repr(original)[:100_000], "dead_lettered_at_ms": int(time.time() * 1000)}
        return Outgoing(self.settings.dead_letter_topic, key.encode(), events.encode(body),
                        f"dead letter for {key[:80]}")

    # -- send and wait ---------------------------------------------------------------------------
    def publish(self, batch: list[Outgoing]) -> None:
        """Send and wait for every ack (see the module's docstring for what is retried, dead-lettered or
        refused)."""
        backoff = 0.5
        started = time.monotonic()
        while batch:
            sent = self.kafka.send_all(batch, lambda o: (o.topic, o.key, o.value))
            self._record_acks(sent.acked)  # may find that the broker lost records: rewinds
            done = {id(o) for o, _ in sent.acked} | {id(o) for o, _ in sent.refused}
            rest = [o for o in batch if id(o) not in done]
            rest += [self.dead_letter(o.topic, o.value[:100_000], f"the broker refused the record: {reason}",
                                      key=o.key.decode(errors="replace")) for o, reason in sent.refused]
            if sent.failure is not None:
                self._on_failure(sent.failure, sent.failed_on, len(rest), backoff)
                backoff = min(backoff * 2, 30)
            batch = rest
        metrics.PRODUCER_PUBLISH_SECONDS.observe(time.monotonic() - started)

    def _on_failure(self, failure: Exception, failed_on: Outgoing | None, pending: int, backoff: float) -> None:
        if isinstance(failure, BrokerForgot):
            log.error("%s: the broker may have lost acknowledged records; checking what it holds, then sending "
                      "%d records again with a new producer", failure, pending)
            self.kafka.renew()
        elif isinstance(failure, KafkaRefused) and failed_on is not None:
            raise PublishFailed(
                f"Kafka refused {failed_on.what or 'a record'} for {failed_on.topic}: {failure}. Retrying cannot "
                "fix this: check the topic's configuration and this client's permissions on the broker, then "
                "start the producer again (it resumes from its last saved token)"
            ) from failure
        else:
            log.error("Kafka did not acknowledge a batch of %d (%s); retrying in %.1fs, token held", pending,
                      failure, backoff)
        self._pause(backoff)
        try:
            self.check_broker_holds()
        except KafkaDataLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker is still away: the next try will tell
            log.debug("cannot compare end offsets yet: %s", exc)

    def _pause(self, seconds: float) -> None:
        """Wait before a retry, giving way to a stop request (the batch in hand stays unacknowledged)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self.stopping():
                raise Stopped
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    # -- has Kafka kept what it acknowledged? ----------------------------------------------------
    def broker_holds(self) -> dict[str, int]:
        held = end_offsets(self.settings, self.settings.topics)
        return {partition_key(topic, partition): offset for (topic, partition), offset in held.items()}

    def check_broker_holds(self) -> None:
        """On start and after a failed batch: does the broker still hold every record it acknowledged?"""
        if not self.acked:
            return
        held = self.broker_holds()
        if shortfall(self.acked, held):
            raise self._lost(self.acked, held, "the broker holds fewer records than it acknowledged")

    def _lost(self, acked: dict[str, int], held: dict[str, int], why: str) -> KafkaDataLost:
        """The exception that rewinds to the newest journalled checkpoint the broker still fully holds."""
        short = shortfall(acked, held)
        ranges = ", ".join(f"{k} offsets {a}..{b - 1}" for k, (a, b) in sorted(short.items()))
        target = next((c for c in reversed(self.store.journal()) if not shortfall(c.acked_offsets, held)), None)
        return KafkaDataLost(f"{why}: {ranges}", target, held)

    def _record_acks(self, acked: list[tuple[Outgoing, Ack]]) -> None:
        """Count acknowledged records and keep each partition's acknowledged end. An acknowledgement at an
        offset below one acknowledged before means the broker lost records and is re-using their offsets."""
        reused: dict[str, int] = {}
        per_topic: dict[str, int] = {}
        for outgoing, metadata in acked:
            if outgoing.topic == self.settings.dead_letter_topic:
                continue
            self.stats.published += 1
            per_topic[outgoing.topic] = per_topic.get(outgoing.topic, 0) + 1
            key = partition_key(metadata.topic, metadata.partition)
            if metadata.offset < self.acked.get(key, 0):
                reused[key] = min(reused.get(key, metadata.offset), metadata.offset)
            self.acked[key] = max(self.acked.get(key, 0), metadata.offset + 1)
        for topic, count in per_topic.items():
            metrics.PRODUCER_EVENTS.labels(topic).inc(count)
        if reused:
            held = self.broker_holds()
            valid = {k: min(v, reused.get(k, v)) for k, v in held.items()}
            raise self._lost(self.acked, valid, "the broker acknowledged new records at offsets it had "
                                                "acknowledged before")
