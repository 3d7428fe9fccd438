"""The producer's publishing (producer/publishing.py) against a scripted Kafka client: what it retries,
dead-letters, stops on, and how it notices a broker that re-uses offsets it had acknowledged."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, MessageSizeTooLargeError, TopicAuthorizationFailedError

from lakehouse.adapters.kafka import Publisher
from lakehouse.core.config import Settings
from producer.checkpoint import FileCheckpointStore
from producer.publishing import EventPublisher, KafkaDataLost, ListenerStats, Outgoing, PublishFailed, Stopped

Metadata = namedtuple("Metadata", "topic partition offset")


class Future:
    def __init__(self, value: Any = None, exception: BaseException | None = None) -> None:
        self.is_done, self.value, self.exception = True, value, exception

    def succeeded(self) -> bool:
        return self.exception is None


class ScriptedKafka:
    """Answers each send from a script: an exception for the record, or the next offset of its partition."""

    config = {"max_request_size": 1_048_576}

    def __init__(self, answers: list[Any]) -> None:
        self.answers, self.offsets, self.sent = answers, {}, []

    def send(self, topic: str, key: bytes, value: bytes) -> Future:
        self.sent.append(value)
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, BaseException):
            return Future(exception=answer)
        offset = self.offsets.get(topic, 0) if answer is None else answer
        self.offsets[topic] = offset + 1
        return Future(Metadata(topic, 0, offset))

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def listener(tmp_path: Path, kafka: ScriptedKafka) -> EventPublisher:
    settings = Settings.from_env(state_dir=tmp_path)
    adapter = Publisher.__new__(Publisher)
    adapter.settings, adapter._producer = settings, kafka
    store = FileCheckpointStore(tmp_path / "token.json")
    store.load()
    made = EventPublisher(settings, ListenerStats(), store, lambda: False, kafka=adapter)
    made.broker_holds = lambda: {"cdc.shop.orders:0": kafka.offsets.get("cdc.shop.orders", 0)}  # type: ignore[method-assign]
    return made


def batch(n: int) -> list[Outgoing]:
    return [Outgoing("cdc.shop.orders", f"k{i}".encode(), f"v{i}".encode(), f"event {i}") for i in range(n)]


def test_a_record_the_broker_refuses_as_too_large_is_dead_lettered_and_the_rest_published(tmp_path: Path) -> None:
    kafka = ScriptedKafka([None, MessageSizeTooLargeError("too big"), None])
    made = listener(tmp_path, kafka)
    made.publish(batch(3))
    assert made.stats.published == 2 and made.stats.dead_lettered == 1
    assert b"the broker refused the record" in kafka.sent[-1]


def test_retriable_errors_are_retried_and_a_stop_request_ends_the_wait(tmp_path: Path) -> None:
    made = listener(tmp_path, ScriptedKafka([KafkaConnectionError("down"), None, None]))
    made.publish(batch(2))  # the first try failed, the second went through
    assert made.stats.published == 2
    stopping = listener(tmp_path, ScriptedKafka([KafkaConnectionError("down")] * 100))
    stopping.stopping = lambda: True  # type: ignore[method-assign]
    with pytest.raises(Stopped):
        stopping.publish(batch(1))


def test_a_permanent_refusal_stops_with_the_event_named(tmp_path: Path) -> None:
    made = listener(tmp_path, ScriptedKafka([TopicAuthorizationFailedError("no")]))
    with pytest.raises(PublishFailed, match="event 0.*Retrying cannot fix this"):
        made.publish(batch(1))


def test_an_acknowledgement_at_an_offset_acknowledged_before_means_the_broker_lost_records(tmp_path: Path) -> None:
    kafka = ScriptedKafka([])
    made = listener(tmp_path, kafka)
    made.publish(batch(5))  # offsets 0..4 acknowledged
    kafka.answers = [2]  # the broker lost 2..4 and gives offset 2 again
    with pytest.raises(KafkaDataLost, match="offsets 2..4"):
        made.publish(batch(1))
