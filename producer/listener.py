"""MongoDB change stream -> Kafka, at least once with deterministic change_ids.

The loop reads a batch of events, publishes it (acks=all, idempotent), waits for every ack, and only
then persists the resume token of the batch's last event. A crash therefore repeats at most the
unacknowledged batch, and every repeated event carries the same change_id.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lakehouse.adapters.kafka import (
    Ack,
    BrokerForgot,
    KafkaRefused,
    Publisher,
    end_offsets,
    ensure_topics,
    publisher,
)
from lakehouse.adapters.mongo import ChangeStream, HistoryLost, cluster_time, enable_pre_images, require_replica_set
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import events
from lakehouse.contracts.events import SourcePosition
from lakehouse.contracts.positions import partition_key
from lakehouse.core.config import Settings
from lakehouse.core.errors import ConfigError, Permanent, Transient
from lakehouse.core.files import write_json_atomically
from lakehouse.core.progress import Progress
from producer import metrics
from producer.checkpoint import Checkpoint, FileCheckpointStore, shortfall

log = logging.getLogger(__name__)

SNAPSHOT_MODES = ("initial", "never", "when_needed")


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


class CannotResume(Permanent, RuntimeError):
    """The change stream cannot resume where Kafka has it, and re-snapshotting was not allowed."""


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


# Events about a whole collection or database: they end (or move) every document of a collection.
LIFECYCLE_OPERATIONS = ("drop", "rename", "dropDatabase", "invalidate")


def watch_pipeline(settings: Settings) -> list[dict[str, Any]]:
    """The configured collections' changes out of the database-level stream, and the lifecycle events
    that concern them: a drop or rename of one, a rename onto one, the database dropped (and the
    invalidate that follows it; a filter that hid it would leave the stream dead without a word)."""
    captured = list(settings.collections)
    return [{"$match": {"$or": [
        {"ns.coll": {"$in": captured}},
        {"operationType": "rename", "to.coll": {"$in": captured}},
        {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
    ]}}]


class ChangeStreamListener:
    def __init__(self, settings: Settings, snapshot_mode: str = "initial", batch_size: int = 2000,
                 checkpoint_interval: float = 1.0, start_at: Any = None) -> None:
        """`start_at` (a bson Timestamp): with no stored token and snapshot_mode "never", stream from
        that cluster time instead of from now (replays)."""
        if snapshot_mode not in SNAPSHOT_MODES:
            raise ConfigError(f"--snapshot must be one of {SNAPSHOT_MODES}, not {snapshot_mode!r}")
        self.settings = settings
        self.snapshot_mode = snapshot_mode
        self.batch_size = batch_size
        self.checkpoint_interval = checkpoint_interval
        self.start_at = start_at
        self._saved_at = 0.0
        self._saved_token: Mapping[str, Any] | None = None
        self._saved_read_until: tuple[int, int] | None = None
        self.store = FileCheckpointStore(settings.producer_checkpoint)
        self.client = connect_mongo(settings, "lakehouse-producer")
        self.db = self.client[settings.mongo_db]
        self.kafka = publisher(settings)
        # Each captured collection's key field, read from the spec once (not per event: a file stat each).
        self._keys = {name: settings.collection(name).key for name in settings.collections}
        self.stats = ListenerStats()
        self._stopping = False
        self._position: SourcePosition | None = None
        # "topic:partition" -> offset after the last record Kafka acknowledged (collection topics).
        self._acked: dict[str, int] = {}
        # The reconcile's cut (producer/checkpoint.Checkpoint.read_until), and MongoDB's time when the stream
        # was last found idle: the next idle read, later, has seen everything before that time.
        self._read_until: tuple[int, int] | None = None
        self._idle_mark: tuple[int, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close(self) -> None:
        self.kafka.close(timeout=10)
        self.client.close()

    def prepare(self) -> None:
        require_replica_set(self.client, self.settings)
        ensure_topics(self.settings, [*self.settings.topics, self.settings.dead_letter_topic])
        for name in self.settings.collections:
            self._enable_pre_images(name)

    def _enable_pre_images(self, name: str) -> None:
        """Pre-images give deletes their order_id (Kafka key); without them deletes key by _id."""
        refused = enable_pre_images(self.db, name)
        if refused:
            log.warning("could not enable pre-images on %s.%s (%s); deletes will be keyed by _id",
                        self.settings.mongo_db, name, refused)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, until_idle: bool = False) -> ListenerStats:
        """Stream until stopped (or, with until_idle, until the stream has nothing new)."""
        self.prepare()
        while not self._stopping:
            checkpoint = self.store.load()
            try:
                self._read_until, self._idle_mark = (checkpoint.read_until if checkpoint else None), None
                if checkpoint is None:
                    self._acked = {}
                    if self.snapshot_mode == "never":
                        self._stream(self._open_stream(None, start_at=self.start_at), until_idle)
                    else:
                        self._snapshot_then_stream(until_idle)
                else:
                    self._position = checkpoint.position
                    self.stats.published = checkpoint.events_published
                    self._acked = dict(checkpoint.acked_offsets)
                    self._check_broker_holds()
                    stream = self._open_stream(checkpoint.resume_token)
                    self._copy_new_collections(checkpoint, stream)
                    self._stream(stream, until_idle)
                return self.stats
            except Stopped:
                log.info("stopped before Kafka acknowledged the batch in hand; its token is not saved")
                return self.stats
            except HistoryLost as exc:
                lost: Exception = exc
            except KafkaDataLost as exc:
                self.stats.kafka_losses += 1
                metrics.PRODUCER_KAFKA_LOSSES.inc()
                if exc.rewind_to is not None:
                    position = exc.rewind_to.position
                    log.error("KAFKA LOST ACKNOWLEDGED RECORDS: %s; publishing again from the checkpoint of cluster "
                              "time %s (the warehouse keeps each change once)", exc,
                              f"{position.cluster_time_s}.{position.cluster_time_inc}" if position else "?")
                    self.stats.republished_from_journal += 1
                    self.store.rewind_to(exc.rewind_to, exc.held)
                    continue
                log.error("KAFKA LOST ACKNOWLEDGED RECORDS: %s; no saved checkpoint is old enough to publish again "
                          "from", exc)
                lost = exc
            if self.snapshot_mode != "when_needed":
                raise CannotResume(
                    f"cannot resume the change stream where Kafka has it ({lost}). Run "
                    "`lakehouse produce --snapshot when_needed` to re-snapshot automatically, or "
                    f"delete {self.store.path} and run with --snapshot initial"
                ) from lost
            log.error("RESUME TOKEN LOST (%s): re-snapshotting every collection", lost)
            self.stats.resnapshots += 1
            self.store.clear()
        return self.stats

    # -- has Kafka kept what it acknowledged? ----------------------------------------------------
    def _data_key(self, topic: str) -> bool:
        return topic != self.settings.dead_letter_topic

    def _broker_holds(self) -> dict[str, int]:
        held = end_offsets(self.settings, self.settings.topics)
        return {partition_key(topic, partition): offset for (topic, partition), offset in held.items()}

    def _lost(self, acked: dict[str, int], held: dict[str, int], why: str) -> KafkaDataLost:
        """The exception that rewinds to the newest journalled checkpoint the broker still fully holds."""
        short = shortfall(acked, held)
        ranges = ", ".join(f"{k} offsets {a}..{b - 1}" for k, (a, b) in sorted(short.items()))
        target = next((c for c in reversed(self.store.journal()) if not shortfall(c.acked_offsets, held)), None)
        return KafkaDataLost(f"{why}: {ranges}", target, held)

    def _check_broker_holds(self) -> None:
        """On start and after a failed batch: does the broker still hold every record it acknowledged?"""
        if not self._acked:
            return
        held = self._broker_holds()
        if shortfall(self._acked, held):
            raise self._lost(self._acked, held, "the broker holds fewer records than it acknowledged")

    def _record_acks(self, acked: list[tuple[Outgoing, Ack]]) -> None:
        """Count acknowledged records and keep each partition's acknowledged end. An acknowledgement at an
        offset below one acknowledged before means the broker lost records and is re-using their offsets."""
        reused: dict[str, int] = {}
        per_topic: dict[str, int] = {}
        for outgoing, metadata in acked:
            if not self._data_key(outgoing.topic):
                continue
            self.stats.published += 1
            per_topic[outgoing.topic] = per_topic.get(outgoing.topic, 0) + 1
            key = partition_key(metadata.topic, metadata.partition)
            if metadata.offset < self._acked.get(key, 0):
                reused[key] = min(reused.get(key, metadata.offset), metadata.offset)
            self._acked[key] = max(self._acked.get(key, 0), metadata.offset + 1)
        for topic, count in per_topic.items():
            metrics.PRODUCER_EVENTS.labels(topic).inc(count)
        if reused:
            held = self._broker_holds()
            valid = {k: min(v, reused.get(k, v)) for k, v in held.items()}
            raise self._lost(self._acked, valid, "the broker acknowledged new records at offsets it had "
                                                 "acknowledged before")

    def _open_stream(self, resume_token: Mapping[str, Any] | None, start_at: Any = None) -> ChangeStream:
        return ChangeStream(self.db, watch_pipeline(self.settings), resume_token, start_at,
                            prefetch=2 * self.batch_size)

    def _snapshot_then_stream(self, until_idle: bool) -> None:
        """Open the stream first, copy, then stream from the opening point: nothing is missed, and
        a change both copied and streamed sorts after its snapshot copy."""
        opened_at = cluster_time(self.db)
        stream = self._open_stream(None, start_at=opened_at)
        self._copy(self.settings.collections, (opened_at.time, opened_at.inc))
        self._save(stream.resume_token)
        self._stream(stream, until_idle)

    def _copy_new_collections(self, checkpoint: Checkpoint, stream: ChangeStream) -> None:
        """Collections captured now that the token's run did not capture (added to collections.toml or
        COLLECTIONS) are copied first, as of now: the stream then carries their later changes. When the
        checkpoint does not say, every one is copied again (a copy is one more version, never a loss)."""
        before = checkpoint.collections or ()
        new = tuple(name for name in self.settings.collections if name not in before)
        if not new:
            return
        at = cluster_time(self.db)
        log.warning("collection(s) %s are captured now and were not before: copying them as of cluster time %s.%s",
                    ", ".join(new), at.time, at.inc)
        self._copy(new, (at.time, at.inc))
        self._saved_token = None  # the same token, now with the new collections recorded
        self._save(stream.resume_token)

    def _copy(self, names: tuple[str, ...], at: tuple[int, int]) -> None:
        """Publish every document of `names` as of cluster time `at`, then each one's snapshot_end."""
        expected = sum(self.db[name].estimated_document_count() for name in names)
        with Progress("snapshot", total=expected, unit="documents") as progress:
            for name in names:
                topic = self.settings.topic_for(name)
                batch: list[Outgoing] = []
                for document in self.db[name].find().sort("_id", 1):
                    envelope = events.from_snapshot(self.settings.mongo_db, name, document, at,
                                                     self._keys[name])
                    batch.extend(self._outgoing(topic, envelope, document))
                    if len(batch) >= self.batch_size:
                        self._publish(batch)
                        self.stats.snapshots += len(batch)
                        progress.advance(len(batch))
                        batch = []
                self._publish(batch)
                self.stats.snapshots += len(batch)
                progress.advance(len(batch))
                self._publish(self._outgoing(topic, events.snapshot_end(self.settings.mongo_db, name, at), None))

    def _stream(self, stream: ChangeStream, until_idle: bool) -> None:
        """Read a batch, publish it and wait for its acks, then (at most every checkpoint_interval,
        and always when idle or stopping) persist the stream's token, which is then the last
        acknowledged event's, or the post-batch token of an idle stream (the heartbeat)."""
        last_progress, logged = time.monotonic(), -1
        # A bounded run (replay, --until-idle) is long work with an end: it shows progress. A service
        # logs a running total every few seconds instead.
        progress = Progress("change stream", unit="events") if until_idle else None
        try:
            while not self._stopping:
                batch, then = self._read_batch(stream)
                if batch:
                    self._publish(batch)
                    self._idle_mark = None
                    if self._position is not None:
                        self._passed((self._position.cluster_time_s, self._position.cluster_time_inc))
                    if progress is not None:
                        progress.advance(len(batch))
                elif then is None:
                    self._idle()
                if then is not None:
                    stream = self._after_lifecycle(stream, *then)
                    continue
                if not batch or time.monotonic() - self._saved_at >= self.checkpoint_interval:
                    self._save(stream.resume_token)
                if progress is None and time.monotonic() - last_progress > 5 and self.stats.published != logged:
                    last_progress, logged = time.monotonic(), self.stats.published
                    log.info("published %d events (%d dead-lettered)", self.stats.published,
                             self.stats.dead_lettered)
                if until_idle and not batch:
                    break
            self._save(stream.resume_token)
        finally:
            stream.close()
        if progress is not None:
            progress.close()

    def _passed(self, at: tuple[int, int]) -> None:
        if self._read_until is None or at > self._read_until:
            self._read_until = at

    def _idle(self) -> None:
        """The stream had nothing: everything before the time taken at the previous idle read is read."""
        if self._idle_mark is not None:
            self._passed(self._idle_mark)
        try:
            now = cluster_time(self.db)
            self._idle_mark = (now.time, now.inc)
        except Exception as exc:  # noqa: BLE001 - only the cut waits; the stream's own errors come from it
            log.debug("cannot read MongoDB's cluster time (%s)", exc)
            self._idle_mark = None

    def _after_lifecycle(self, stream: Any, kind: str, value: Any) -> Any:
        """What a lifecycle event asks once the events before it are acknowledged: copy a collection
        renamed onto a captured name, or re-open the stream after an invalidate (database dropped)."""
        if kind == "copy":
            at = cluster_time(self.db)
            log.warning("collection %s.%s appeared by a rename: copying it as of cluster time %s.%s",
                        self.settings.mongo_db, value, at.time, at.inc)
            self._copy((value,), (at.time, at.inc))
            self._save(stream.resume_token)
            return stream
        log.warning("the change stream was invalidated (the database was dropped); opening it again after the "
                    "invalidate event")
        self._save(value)
        stream.close()
        return self._open_stream(value)

    def _read_batch(self, stream: Any) -> tuple[list[Outgoing], tuple[str, Any] | None]:
        """A batch of events, and what to do after publishing it when a lifecycle event needs more than
        an event: ("copy", collection) or ("invalidate", its token)."""
        batch: list[Outgoing] = []
        deadline = time.monotonic() + 0.5
        while len(batch) < self.batch_size and time.monotonic() < deadline and not self._stopping:
            change = stream.try_next()
            if change is None:
                break
            operation = change["operationType"]
            if operation == "invalidate":  # after a dropDatabase, which was recorded as the lifecycle event
                return batch, ("invalidate", change["_id"])
            seconds, inc = change["clusterTime"].time, change["clusterTime"].inc
            if operation in LIFECYCLE_OPERATIONS:
                batch.extend(self._lifecycle_events(change))
                renamed_to = (change.get("to") or {}).get("coll")
                if operation == "rename" and renamed_to in self.settings.collections:
                    return batch, ("copy", renamed_to)
                continue
            if change.get("ns", {}).get("coll") not in self.settings.collections:
                continue
            self._position = (
                self._position.next_for(seconds, inc) if self._position else SourcePosition(seconds, inc, 0)
            )
            topic = self.settings.topic_for(change["ns"]["coll"])
            batch.extend(self._outgoing_change(topic, change))
        return batch, None

    def _lifecycle_events(self, change: Mapping[str, Any]) -> list[Outgoing]:
        """A drop, a rename away or the database dropped ends every document of the captured collections
        concerned, as of the event's cluster time: a snapshot_end with nothing copied before it."""
        operation, ns = change["operationType"], change.get("ns") or {}
        if operation == "dropDatabase":
            gone = tuple(self.settings.collections)
        elif ns.get("coll") in self.settings.collections:
            gone = (ns["coll"],)
        else:
            gone = ()
        self._lifecycle(change, gone)
        at = (change["clusterTime"].time, change["clusterTime"].inc)
        out: list[Outgoing] = []
        for name in gone:
            envelope = events.collection_ended(self.settings.mongo_db, name, at, change["_id"]["_data"],
                                               operation)
            out.extend(self._outgoing(self.settings.topic_for(name), envelope, None))
        return out

    def _lifecycle(self, change: Mapping[str, Any], collections: tuple[str, ...]) -> None:
        """Log a lifecycle event and keep it for `status`."""
        ns = change.get("ns") or {}
        what = {"operation": change["operationType"], "db": ns.get("db"), "collection": ns.get("coll"),
                "to": (change.get("to") or {}).get("coll"), "ended": list(collections),
                "cluster_time": f"{change['clusterTime'].time}.{change['clusterTime'].inc}"
                if change.get("clusterTime") else None,
                "seen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        log.warning("lifecycle event %s on %s.%s%s: %s", what["operation"], what["db"], what["collection"],
                    f" (to {what['to']})" if what["to"] else "",
                    f"every document of {', '.join(collections)} ends in the warehouse" if collections
                    else "no captured collection ends")
        write_json_atomically(self.settings.producer_lifecycle, what)

    def _outgoing_change(self, topic: str, change: Mapping[str, Any]) -> list[Outgoing]:
        assert self._position is not None
        try:
            envelope = events.from_change(change, self._position,
                                          self._keys[change["ns"]["coll"]])
        except Exception as exc:  # an unserialisable document must not stop the stream
            return [self._dead_letter(topic, change, f"cannot serialise change: {exc!r}")]
        return self._outgoing(topic, envelope, change)

    def _outgoing(self, topic: str, envelope: Mapping[str, Any], original: Any) -> list[Outgoing]:
        value = events.encode(envelope)
        key = events.kafka_key(envelope)
        what = describe(envelope)
        size = Publisher.record_size(key, value)
        limit = self.kafka.max_request_size
        if size > limit:
            return [self._dead_letter(topic, original, f"record of {size} bytes (key, value and overhead) exceeds "
                                      f"max_request_size {limit}", key=key.decode(), envelope=envelope, size=size)]
        return [Outgoing(topic, key, value, what)]

    def _dead_letter(self, topic: str, original: Any, reason: str, key: str | None = None,
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

    # -- publish and persist ---------------------------------------------------------------------
    def _publish(self, batch: list[Outgoing]) -> None:
        """Send and wait for every ack. A transient failure retries the rest of the batch (same change_ids)
        with backoff, and gives way to a stop request; a record the broker refuses as too large goes to the
        dead-letter topic; any other refusal stops the producer with an error naming the event."""
        backoff = 0.5
        started = time.monotonic()
        while batch:
            sent = self.kafka.send_all(batch, lambda o: (o.topic, o.key, o.value))
            self._record_acks(sent.acked)  # may find that the broker lost records: rewinds
            done = {id(o) for o, _ in sent.acked} | {id(o) for o, _ in sent.refused}
            rest = [o for o in batch if id(o) not in done]
            rest += [self._dead_letter(o.topic, o.value[:100_000], f"the broker refused the record: {reason}",
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
            self._check_broker_holds()
        except KafkaDataLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker is still away: the next try will tell
            log.debug("cannot compare end offsets yet: %s", exc)

    def _pause(self, seconds: float) -> None:
        """Wait before a retry, giving way to a stop request (the batch in hand stays unacknowledged)."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self._stopping:
                raise Stopped
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def _save(self, token: Mapping[str, Any] | None) -> None:
        """Persist `token` unless it is already stored. Call only once everything before it is acked."""
        self._saved_at = time.monotonic()
        # An idle stream's token may not move while the cluster time does: the cut moves on all the same.
        if token is None or (token == self._saved_token and self._read_until == self._saved_read_until):
            return
        self.store.save(Checkpoint(dict(token), self._position, self.stats.published, dict(self._acked),
                                   tuple(self.settings.collections), self._read_until))
        self._saved_token, self._saved_read_until = token, self._read_until
        metrics.PRODUCER_TOKEN_SAVED.set_to_current_time()
        if self._position is not None:
            metrics.PRODUCER_LAST_CHANGE.set(self._position.cluster_time_s)



def describe(envelope: Mapping[str, Any] | None) -> str:
    """An event in words, for errors: collection, _id, change_id."""
    if not envelope:
        return "an event"
    doc_id = str(envelope.get("doc_id"))
    return (f"the {envelope.get('op')} of {envelope.get('db')}.{envelope.get('collection')} _id "
            f"{doc_id[:80]}{'...' if len(doc_id) > 80 else ''} (change_id {envelope.get('change_id')})")


def republish(settings: Settings, resume_token: Mapping[str, Any] | None = None, start_at: Any = None,
              snapshot: bool = False) -> ListenerStats:
    """Publish again, with their change_ids, every change after `resume_token` or since cluster time
    `start_at` (a bson Timestamp), or with `snapshot` a fresh copy of every document then the changes
    made meanwhile, until caught up. Runs on a scratch token file: the producer's own is left alone."""
    import tempfile
    from pathlib import Path

    if resume_token is not None or start_at is not None:
        _can_stream_from(settings, resume_token, start_at)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="replay-kafka-", dir=settings.state_dir) as scratch:
        replay_settings = settings.replace(state_dir=Path(scratch))
        if resume_token is not None:
            FileCheckpointStore(replay_settings.producer_checkpoint).save(
                Checkpoint(dict(resume_token), None, 0, collections=tuple(settings.collections)))
        listener = ChangeStreamListener(replay_settings, snapshot_mode="initial" if snapshot else "never",
                                        start_at=start_at)
        try:
            return listener.run(until_idle=True)
        finally:
            listener.close()


def _can_stream_from(settings: Settings, resume_token: Mapping[str, Any] | None, start_at: Any) -> None:
    """Open and close the change stream at the start point: a token or time MongoDB refuses is refused
    before anything is created (a captured collection with its pre-images, a Kafka topic)."""
    client = connect_mongo(settings, "lakehouse-replay")
    try:
        ChangeStream(client[settings.mongo_db], watch_pipeline(settings), resume_token, start_at).close()
    finally:
        client.close()
