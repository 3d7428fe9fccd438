"""The one module that talks to Kafka, so the client can be swapped in one place.

The producer's client is chosen by KAFKA_CLIENT: confluent-kafka (librdkafka: its batching and I/O run
in native threads, off the GIL that the change stream's decoding and encoding need) or kafka-python;
both partition keys as Java's default partitioner (murmur2), so a switch keeps every key's partition.
Reading (admin, offsets, partitions) uses kafka-python. Partitions are named "topic:partition" above
this module, records are `Record`s, and the clients' errors are translated: a send the broker
refuses as too large is `refused`, one that may succeed later is `KafkaTransient`, one where the
broker forgot this producer's sequence is `BrokerForgot`, and any other refusal is `KafkaRefused`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    InvalidPartitionsError,
    InvalidProducerEpochError,
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumberError,
    PolicyViolationError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    UnknownProducerIdError,
)
from kafka.record.default_records import DefaultRecordBatchBuilder

from lakehouse.contracts.positions import partition_key, split_key
from lakehouse.core.config import Settings
from lakehouse.core.errors import START_HINT, ConfigError, LakehouseError, Permanent, ServerUnreachable, Transient

log = logging.getLogger(__name__)

# What a record adds to its key, value and headers inside a request (batch and request headers).
REQUEST_OVERHEAD_BYTES = 512


class KafkaTransient(Transient):
    """Kafka did not acknowledge (a broker away, a timeout): sending again may succeed."""


class BrokerForgot(Transient):
    """The idempotent producer's sequence was refused: the broker lost records it had acknowledged, or
    forgot this producer. A new producer (`Publisher.renew`) and a look at the end offsets repair it."""


class KafkaRefused(Permanent):
    """The broker refused a record for a reason retrying cannot fix (permissions, topic configuration)."""


def kafka_unreachable(settings: Settings, cause: BaseException | str) -> ServerUnreachable:
    return ServerUnreachable(
        f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({cause}); {START_HINT}, "
        "or point KAFKA_BOOTSTRAP_SERVERS / --kafka at a running broker"
    )


def explain(settings: Settings, exc: BaseException) -> LakehouseError | None:
    """The one-line form of a kafka-python connection error, or None for other errors."""
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError):
        return kafka_unreachable(settings, exc)
    return None


def is_ready(settings: Settings) -> bool:
    """The broker at KAFKA_BOOTSTRAP_SERVERS answers a metadata request (for server start-up)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=2000)
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def broker_answers(address: str) -> bool:
    """The broker at `address` answers a metadata request that lists it: up and registered with the
    controllers (one node of a cluster, for its start-up)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=2000)
    except KafkaError:
        return False
    try:
        node = admin.describe_cluster()
        return any(f"{b['host']}:{b['port']}" == address for b in node["brokers"])  # registered, not only up
    except KafkaError:
        return False
    finally:
        admin.close()


def broker_ids(bootstrap: str) -> set[int]:
    """The ids of the brokers the cluster's metadata lists now (alive and registered)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        return {int(b["broker_id"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()


def replicas(settings: Settings, topics: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """"topic:partition" -> (in-sync replicas, replicas), for the topics (every topic when None)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=5000)
    try:
        return {partition_key(topic["name"], part["partition_index"]): (len(part["isr_nodes"]),
                                                                        len(part["replica_nodes"]))
                for topic in admin.describe_topics(list(topics) if topics is not None else None)
                for part in topic["partitions"]}
    finally:
        admin.close()


def under_replicated(settings: Settings, topics: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """The partitions missing a replica from their in-sync set (a broker away or catching up)."""
    return {key: (isr, total) for key, (isr, total) in replicas(settings, topics).items() if isr < total}


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


class TopicsMissing(Transient):
    """Topics a stage reads do not exist yet: the producer creates them when it starts."""


def require_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Raise TopicsMissing naming the topics the broker does not have (Spark's source fails on them)."""
    require_broker(settings)
    with _translated(settings):
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=5000)
        try:
            existing = set(admin.list_topics())
        finally:
            admin.close()
    missing = [topic for topic in topics if topic not in existing]
    if missing:
        raise TopicsMissing(f"Kafka has no topic {', '.join(missing)} yet: the producer creates the topics when "
                            "it starts (`lakehouse produce`)")


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
        # Replication 0 leaves it to the broker (default.replication.factor: 3 on the embedded cluster).
        replication = settings.kafka_replication_factor or -1
        wanted = [NewTopic(t, settings.kafka_partitions, replication) for t in topics if t not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # another process won the race
                pass
            except (InvalidReplicationFactorError, InvalidPartitionsError, PolicyViolationError) as exc:
                raise _refused_topics(settings, exc) from None
            log.info("created topics %s", [t.name for t in wanted])
    finally:
        admin.close()


def _refused_topics(settings: Settings, exc: Exception) -> ConfigError:
    """The broker's refusal of the topics' shape, as the setting to change."""
    said = re.search(r"error_message='([^']*)'", str(exc))
    reason = said.group(1) if said else str(exc)[:300]
    if isinstance(exc, InvalidReplicationFactorError):
        return ConfigError(f"KAFKA_REPLICATION_FACTOR={settings.kafka_replication_factor}: Kafka at "
                           f"{settings.kafka_bootstrap_servers} cannot create topics with it ({reason}); give at most "
                           "the brokers there are, or 0 for the broker's default")
    return ConfigError(f"KAFKA_PARTITIONS={settings.kafka_partitions}: Kafka at {settings.kafka_bootstrap_servers} "
                       f"refused topics with that many partitions ({reason}); give fewer")


def delete_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Delete topics that exist (a bench's own, at its end): a broker's work grows with the partitions
    it holds, so leftovers slow every later run."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="lakehouse-admin")
    try:
        doomed = sorted(set(topics) & set(admin.list_topics()))
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def recreate_topics(settings: Settings, topics: Iterable[str], timeout: float = 60) -> None:
    """Delete the topics and create them again, empty: a loss of everything they held, made on purpose
    (fault runs: the producer and the streaming job must notice and repair it)."""
    topics = list(topics)
    delete_topics(settings, topics)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="lakehouse-admin")
    try:
        deadline = time.monotonic() + timeout
        while set(topics) & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise KafkaTransient(f"Kafka did not delete {topics} within {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        admin.close()
    ensure_topics(settings, topics)


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


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> end offset, for every partition of the topics."""
    with _translated(settings):
        reader = OffsetReader.of(settings)
        try:
            return {split_key(k): o for k, o in reader.end_offsets(reader.partitions(topics)).items()}
        finally:
            reader.close()


def read_values(settings: Settings, ends: dict[tuple[str, int], int], newest: int | None = None) -> Iterator[bytes]:
    """The values of the records of the given partitions up to their end offsets (`ends`, from
    end_offsets): all of them, or each partition's `newest` ones. For small topics such as the
    dead-letter topic."""
    if not sum(ends.values()):
        return
    with _translated(settings):
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


@contextlib.contextmanager
def _translated(settings: Settings) -> Iterator[None]:
    """kafka-python's errors raised inside become ServerUnreachable or KafkaTransient (ask again later)."""
    try:
        yield
    except KafkaError as exc:
        raise explain(settings, exc) or KafkaTransient(f"Kafka did not answer: {exc!r}") from exc


# -- publishing ------------------------------------------------------------------------------------
Item = TypeVar("Item")
T = TypeVar("T")


@dataclass(frozen=True)
class Ack:
    topic: str
    partition: int
    offset: int


@dataclass
class Sent(Generic[Item]):
    """What became of a batch: acknowledged, refused as too large (for the dead-letter topic), and the
    first other failure (with the item it happened on), for the caller to retry or stop on."""

    acked: list[tuple[Item, Ack]] = field(default_factory=list)
    refused: list[tuple[Item, str]] = field(default_factory=list)
    failure: LakehouseError | None = None
    failed_on: Item | None = None


class _Refused:
    """A send the client refused before it reached the broker, shaped like its future."""

    is_done = True

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def succeeded(self) -> bool:
        return False


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# Errors of the idempotent producer's state that mean the broker lost what it had acknowledged (or
# forgot this producer).
_BROKER_FORGOT = (OutOfOrderSequenceNumberError, UnknownProducerIdError, InvalidProducerEpochError)


def _as_ours(exc: BaseException) -> LakehouseError:
    if isinstance(exc, LakehouseError):
        return exc
    if isinstance(exc, _BROKER_FORGOT):
        return BrokerForgot(f"Kafka forgot this producer's sequence ({type(exc).__name__})")
    if isinstance(exc, KafkaError) and not exc.retriable:
        return KafkaRefused(repr(exc))
    return KafkaTransient(repr(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}")


class Publisher:
    """An idempotent producer (acks=all) that sends a batch and waits for every acknowledgement
    (kafka-python; `publisher()` gives the configured client's)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: Any = idempotent_producer(settings)

    @property
    def max_request_size(self) -> int:
        return int(self._producer.config["max_request_size"])

    @staticmethod
    def record_size(key: bytes, value: bytes) -> int:
        """A record's size in a request: key, value, record and batch headers."""
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) + REQUEST_OVERHEAD_BYTES

    def send_all(self, batch: Sequence[Item], record: Callable[[Item], tuple[str, bytes, bytes]],
                 flush_timeout: float = 60) -> Sent[Item]:
        """Send every item (`record` gives its topic, key and value) and wait for the acknowledgements."""
        futures: list[Any] = []
        outcome: Sent[Item] = Sent()
        try:
            for item in batch:
                topic, key, value = record(item)
                try:
                    futures.append(self._producer.send(topic, key=key, value=value))
                except _TOO_LARGE as exc:
                    futures.append(_Refused(exc))
            self._producer.flush(timeout=flush_timeout)
        except KafkaError as exc:
            outcome.failure = _as_ours(exc)
        for item, future in zip(batch, futures, strict=False):
            if not future.is_done:
                continue
            if future.succeeded():
                meta = future.value
                outcome.acked.append((item, Ack(meta.topic, meta.partition, meta.offset)))
            elif isinstance(future.exception, _TOO_LARGE):
                outcome.refused.append((item, str(future.exception)))
            elif outcome.failure is None or outcome.failed_on is None:
                outcome.failure, outcome.failed_on = _as_ours(future.exception), item
        if outcome.failure is None and len(outcome.acked) + len(outcome.refused) < len(batch):
            outcome.failure = KafkaTransient("not every record was acknowledged")
        return outcome

    def renew(self) -> None:
        """A new producer (a new producer id and sequence), after the broker forgot the old one."""
        self._producer.close(timeout=5)
        self._producer = idempotent_producer(self.settings)

    def close(self, timeout: float = 10) -> None:
        self._producer.close(timeout=timeout)


MAX_REQUEST_SIZE = 1_048_576  # kafka-python's default max_request_size; the confluent client is given the same


class ConfluentPublisher(Publisher):
    """The same contract on confluent-kafka (librdkafka)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = self._new()

    def _new(self) -> Any:
        from confluent_kafka import Producer

        require_broker(self.settings)
        return Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            "client.id": "lakehouse-producer",
            "enable.idempotence": True,  # implies acks=all, bounded in-flight, retries
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # Java's (and kafka-python's) partition for a key
            "message.max.bytes": MAX_REQUEST_SIZE,
            "retry.backoff.ms": 200,
            "message.timeout.ms": 60_000,  # a record not acknowledged by then fails (and is sent again by us)
            "logger": log,
        })

    @property
    def max_request_size(self) -> int:
        return MAX_REQUEST_SIZE

    def send_all(self, batch: Sequence[Item], record: Callable[[Item], tuple[str, bytes, bytes]],
                 flush_timeout: float = 60) -> Sent[Item]:
        from confluent_kafka import KafkaException

        results: list[Any] = [None] * len(batch)

        def delivered(index: int) -> Callable[[Any, Any], None]:
            return lambda err, msg: results.__setitem__(index, (err, msg))

        for index, item in enumerate(batch):
            topic, key, value = record(item)
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=delivered(index))
                    break
                except BufferError:  # librdkafka's queue is full: let it deliver some
                    self._producer.poll(0.05)
                except KafkaException as exc:
                    results[index] = (exc.args[0], None)
                    break
        self._producer.flush(max(flush_timeout, 65))  # message.timeout.ms ends every record by then
        outcome: Sent[Item] = Sent()
        for item, result in zip(batch, results, strict=True):
            if result is None:
                continue
            err, msg = result
            if err is None:
                outcome.acked.append((item, Ack(msg.topic(), msg.partition(), msg.offset())))
            elif _confluent_too_large(err):
                outcome.refused.append((item, err.str()))
            elif outcome.failure is None or outcome.failed_on is None:
                outcome.failure, outcome.failed_on = _confluent_as_ours(err), item
        if outcome.failure is None and len(outcome.acked) + len(outcome.refused) < len(batch):
            outcome.failure = KafkaTransient("not every record was acknowledged")
        return outcome

    def renew(self) -> None:
        self._producer.flush(5)
        self._producer = self._new()

    def close(self, timeout: float = 10) -> None:
        self._producer.flush(timeout)


def _confluent_too_large(err: Any) -> bool:
    from confluent_kafka import KafkaError

    return err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._MSG_SIZE_TOO_LARGE)


def _confluent_as_ours(err: Any) -> LakehouseError:
    from confluent_kafka import KafkaError

    if err.fatal() or err.code() in (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
                                     KafkaError.INVALID_PRODUCER_EPOCH):
        return BrokerForgot(f"Kafka forgot this producer's sequence ({err.name()}: {err.str()})")
    if err.retriable() or err.code() < 0:  # librdkafka's own (timeouts, transport): the broker is away
        return KafkaTransient(f"{err.name()}: {err.str()}")
    return KafkaRefused(f"{err.name()}: {err.str()}")


def publisher(settings: Settings) -> Publisher:
    """The producer of the configured client (KAFKA_CLIENT)."""
    return ConfluentPublisher(settings) if settings.kafka_client == "confluent" else Publisher(settings)


# -- offsets and single records (the streaming job's data-loss watch, status, replay) ----------------
@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch
    timestamp_type: int
    headers: list[tuple[str, bytes]]


def _record(raw: Any) -> Record:
    return Record(raw.key, raw.value, raw.topic, raw.partition, raw.offset, raw.timestamp, raw.timestamp_type,
                  [(k, v) for k, v in (raw.headers or [])])


def _transient(method: Callable[..., T]) -> Callable[..., T]:
    """A Kafka client's error (a timeout, a broker away) as KafkaTransient: callers outside the adapters
    handle the pipeline's errors, never the client library's."""
    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except KafkaError as exc:
            raise KafkaTransient(f"Kafka did not answer ({type(exc).__name__}: {exc})") from exc

    return wrapped


class OffsetReader:
    """Offsets and single records of partitions named "topic:partition". Takes the bootstrap servers
    only (no Settings): Spark hands its sources plain string options. Kafka's errors come out as
    KafkaTransient."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._meta: Any = None
        self._probe: Any = None

    @classmethod
    def of(cls, settings: Settings) -> OffsetReader:
        """A reader of the configured brokers, after checking one answers (one line if none does)."""
        require_broker(settings)
        return cls(settings.kafka_bootstrap_servers)

    def _consumer(self) -> Any:
        if self._meta is None:
            self._meta = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        return self._meta

    @_transient
    def partitions(self, topics: Iterable[str]) -> list[str]:
        consumer = self._consumer()
        return [partition_key(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic)
                                                                            or set())]

    @_transient
    def begin_offsets(self, keys: Iterable[str]) -> dict[str, int]:
        tps = [TopicPartition(*split_key(k)) for k in keys]
        if not tps:
            return {}
        return {partition_key(tp.topic, tp.partition): int(o)
                for tp, o in self._consumer().beginning_offsets(tps).items()}

    @_transient
    def end_offsets(self, keys: Iterable[str]) -> dict[str, int]:
        tps = [TopicPartition(*split_key(k)) for k in keys]
        if not tps:
            return {}
        return {partition_key(tp.topic, tp.partition): int(o) for tp, o in self._consumer().end_offsets(tps).items()}

    def first_offset_at(self, key: str, timestamp_ms: int) -> int | None:
        """The first offset of a record written at or after `timestamp_ms` (None: none is)."""
        return self.first_offsets_at([key], timestamp_ms)[key]

    @_transient
    def first_offsets_at(self, keys: Iterable[str], timestamp_ms: int) -> dict[str, int | None]:
        """Per partition, the first offset of a record written at or after `timestamp_ms` (None: none is)."""
        tps = {k: TopicPartition(*split_key(k)) for k in keys}
        if not tps:
            return {}
        found = self._consumer().offsets_for_times({tp: timestamp_ms for tp in tps.values()})
        return {k: None if found.get(tp) is None else int(found[tp].offset) for k, tp in tps.items()}

    @_transient
    def records_at(self, wanted: dict[str, int], timeout: float = 10) -> dict[str, Record | None]:
        """The record at each wanted offset (None where there is none, e.g. a gap); partitions that do
        not answer within `timeout` are left out."""
        if not wanted:
            return {}
        if self._probe is None:
            self._probe = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                        max_partition_fetch_bytes=65536, fetch_max_wait_ms=50,
                                        retry_backoff_ms=10)  # its idle sleeps, 100 ms each by default
        probe = self._probe
        tps = {k: TopicPartition(*split_key(k)) for k in wanted}
        probe.assign(list(tps.values()))
        for key, tp in tps.items():
            probe.seek(tp, wanted[key])
        found: dict[str, Record | None] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for tp, batch in probe.poll(timeout_ms=200).items():
                key = partition_key(tp.topic, tp.partition)
                if key in found:
                    continue
                record = next((r for r in batch if r.offset >= wanted[key]), None)
                if record is not None:
                    found[key] = _record(record) if record.offset == wanted[key] else None
                    probe.pause(tp)
        probe.resume(*probe.paused())
        return found

    def close(self) -> None:
        for consumer in (self._meta, self._probe):
            if consumer is not None:
                consumer.close()
        self._meta = self._probe = None
