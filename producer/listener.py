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

from kafka.errors import KafkaError, MessageSizeTooLargeError
from pymongo.errors import OperationFailure, PyMongoError

from lakehouse import events
from lakehouse.config import Settings
from lakehouse.events import SourcePosition
from lakehouse.kafka_io import ensure_topics, idempotent_producer
from lakehouse.mongo import connect as connect_mongo
from lakehouse.progress import Progress
from producer.checkpoint import Checkpoint, FileCheckpointStore

log = logging.getLogger(__name__)

# Server answers meaning "your resume token is no longer usable".
HISTORY_LOST_CODES = {286, 280, 260, 9}
SNAPSHOT_MODES = ("initial", "never", "when_needed")


class HistoryLostError(RuntimeError):
    pass


@dataclass
class Outgoing:
    topic: str
    key: bytes
    value: bytes


@dataclass
class ListenerStats:
    published: int = 0
    dead_lettered: int = 0
    snapshots: int = 0
    resnapshots: int = 0  # times the token was lost and everything was copied again


def watch_pipeline(settings: Settings) -> list[dict[str, Any]]:
    """The configured collections' changes, out of the database-level stream."""
    return [{"$match": {"ns.coll": {"$in": list(settings.collections)}}}]


class ChangeStreamListener:
    def __init__(self, settings: Settings, snapshot_mode: str = "initial", batch_size: int = 2000,
                 checkpoint_interval: float = 1.0, start_at: Any = None) -> None:
        """`start_at` (a bson Timestamp): with no stored token and snapshot_mode "never", stream from
        that cluster time instead of from now (replays)."""
        if snapshot_mode not in SNAPSHOT_MODES:
            raise ValueError(f"--snapshot must be one of {SNAPSHOT_MODES}, not {snapshot_mode!r}")
        self.settings = settings
        self.snapshot_mode = snapshot_mode
        self.batch_size = batch_size
        self.checkpoint_interval = checkpoint_interval
        self.start_at = start_at
        self._saved_at = 0.0
        self._saved_token: Mapping[str, Any] | None = None
        self.store = FileCheckpointStore(settings.producer_checkpoint)
        self.client = connect_mongo(settings, "lakehouse-producer")
        self.db = self.client[settings.mongo_db]
        self.kafka = idempotent_producer(settings)
        self.stats = ListenerStats()
        self._stopping = False
        self._position: SourcePosition | None = None

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
        ensure_topics(self.settings, [*self.settings.topics, self.settings.dead_letter_topic])
        for name in self.settings.collections:
            self._enable_pre_images(name)

    def _enable_pre_images(self, name: str) -> None:
        """Pre-images give deletes their order_id (Kafka key); without them deletes key by _id."""
        try:
            if name not in self.db.list_collection_names(filter={"name": name}):
                self.db.create_collection(name)
            self.db.command("collMod", name, changeStreamPreAndPostImages={"enabled": True})
        except PyMongoError as exc:
            log.warning("could not enable pre-images on %s.%s (%s); deletes will be keyed by _id",
                        self.settings.mongo_db, name, exc)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, until_idle: bool = False) -> ListenerStats:
        """Stream until stopped (or, with until_idle, until the stream has nothing new)."""
        self.prepare()
        while not self._stopping:
            checkpoint = self.store.load()
            try:
                if checkpoint is None and self.snapshot_mode == "never":
                    self._stream(self._open_stream(None, start_at=self.start_at), until_idle)
                elif checkpoint is None:
                    self._snapshot_then_stream(until_idle)
                else:
                    self._position = checkpoint.position
                    self.stats.published = checkpoint.events_published
                    self._stream(self._open_stream(checkpoint.resume_token), until_idle)
                return self.stats
            except OperationFailure as exc:
                if exc.code not in HISTORY_LOST_CODES:
                    raise
                lost: Exception = exc
            except HistoryLostError as exc:
                lost = exc
            if self.snapshot_mode != "when_needed":
                raise RuntimeError(
                    f"the stored resume token is no longer in MongoDB's history ({lost}). Run "
                    "`lakehouse produce --snapshot when_needed` to re-snapshot automatically, or "
                    f"delete {self.store.path} and run with --snapshot initial"
                ) from lost
            log.error("RESUME TOKEN LOST (%s): re-snapshotting every collection", lost)
            self.stats.resnapshots += 1
            self.store.clear()
        return self.stats

    def _open_stream(self, resume_token: Mapping[str, Any] | None, start_at: Any = None) -> Any:
        options: dict[str, Any] = {
            "full_document": "updateLookup",
            "full_document_before_change": "whenAvailable",
        }
        if resume_token is not None:
            options["start_after"] = resume_token
        elif start_at is not None:
            options["start_at_operation_time"] = start_at
        return self.db.watch(watch_pipeline(self.settings), **options)

    def _snapshot_then_stream(self, until_idle: bool) -> None:
        """Open the stream first, copy, then stream from the opening point: nothing is missed, and
        a change both copied and streamed sorts after its snapshot copy."""
        opened_at = self.db.command("ping")["operationTime"]
        stream = self._open_stream(None, start_at=opened_at)
        at = (opened_at.time, opened_at.inc)
        expected = sum(self.db[name].estimated_document_count() for name in self.settings.collections)
        with Progress("snapshot", total=expected, unit="documents") as progress:
            for name in self.settings.collections:
                topic = self.settings.topic_for(name)
                batch: list[Outgoing] = []
                for document in self.db[name].find().sort("_id", 1):
                    envelope = events.from_snapshot(self.settings.mongo_db, name, document, at)
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
        self._save(stream.resume_token)
        self._stream(stream, until_idle)

    def _stream(self, stream: Any, until_idle: bool) -> None:
        """Read a batch, publish it and wait for its acks, then (at most every checkpoint_interval,
        and always when idle or stopping) persist the stream's token, which is then the last
        acknowledged event's, or the post-batch token of an idle stream (the heartbeat)."""
        last_progress, logged = time.monotonic(), -1
        # A bounded run (replay, --until-idle) is long work with an end: it shows progress. A service
        # logs a running total every few seconds instead.
        progress = Progress("change stream", unit="events") if until_idle else None
        with stream:
            while not self._stopping:
                batch = self._read_batch(stream)
                if batch:
                    self._publish(batch)
                    if progress is not None:
                        progress.advance(len(batch))
                if not batch or time.monotonic() - self._saved_at >= self.checkpoint_interval:
                    self._save(stream.resume_token)
                if progress is None and time.monotonic() - last_progress > 5 and self.stats.published != logged:
                    last_progress, logged = time.monotonic(), self.stats.published
                    log.info("published %d events (%d dead-lettered)", self.stats.published,
                             self.stats.dead_lettered)
                if until_idle and not batch:
                    break
            self._save(stream.resume_token)
        if progress is not None:
            progress.close()

    def _read_batch(self, stream: Any) -> list[Outgoing]:
        batch: list[Outgoing] = []
        deadline = time.monotonic() + 0.5
        while len(batch) < self.batch_size and time.monotonic() < deadline and not self._stopping:
            change = stream.try_next()
            if change is None:
                break
            if change["operationType"] == "invalidate":
                raise HistoryLostError("change stream invalidated (collection dropped or renamed)")
            if "ns" not in change or change["ns"].get("coll") not in self.settings.collections:
                continue
            seconds, inc = change["clusterTime"].time, change["clusterTime"].inc
            self._position = (
                self._position.next_for(seconds, inc) if self._position else SourcePosition(seconds, inc, 0)
            )
            topic = self.settings.topic_for(change["ns"]["coll"])
            batch.extend(self._outgoing_change(topic, change))
        return batch

    def _outgoing_change(self, topic: str, change: Mapping[str, Any]) -> list[Outgoing]:
        assert self._position is not None
        try:
            envelope = events.from_change(change, self._position)
        except Exception as exc:  # an unserialisable document must not stop the stream
            return [self._dead_letter(topic, change, f"cannot serialise change: {exc!r}")]
        return self._outgoing(topic, envelope, change)

    def _outgoing(self, topic: str, envelope: Mapping[str, Any], original: Any) -> list[Outgoing]:
        value = events.encode(envelope)
        if len(value) > self.kafka.config["max_request_size"]:
            return [self._dead_letter(topic, original, f"message of {len(value)} bytes exceeds "
                                      f"max_request_size {self.kafka.config['max_request_size']}",
                                      key=envelope["order_id"])]
        return [Outgoing(topic, str(envelope["order_id"]).encode(), value)]

    def _dead_letter(self, topic: str, original: Any, reason: str, key: str | None = None) -> Outgoing:
        self.stats.dead_lettered += 1
        if key is None and isinstance(original, Mapping):
            key = events.doc_id_text(original.get("documentKey") or {"_id": original.get("_id")})
        key = key or "unknown"
        log.error("dead-lettering event for key %s on %s: %s", key, topic, reason)
        body = {"reason": reason, "topic": topic, "key": key, "original": repr(original)[:100_000],
                "dead_lettered_at_ms": int(time.time() * 1000)}
        return Outgoing(self.settings.dead_letter_topic, str(key).encode(), events.encode(body))

    # -- publish and persist ---------------------------------------------------------------------
    def _publish(self, batch: list[Outgoing]) -> None:
        """Send and wait for every ack; on a broker failure retry the whole batch (same change_ids)."""
        backoff = 0.5
        while batch:
            try:
                futures = [self.kafka.send(o.topic, key=o.key, value=o.value) for o in batch]
                self.kafka.flush(timeout=60)
                for future in futures:
                    future.get(timeout=0)
                self.stats.published += sum(1 for o in batch if o.topic != self.settings.dead_letter_topic)
                return
            except MessageSizeTooLargeError:
                raise
            except KafkaError as exc:
                log.error("Kafka did not acknowledge a batch of %d (%s); retrying in %.1fs, token held",
                          len(batch), exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)

    def _save(self, token: Mapping[str, Any] | None) -> None:
        """Persist `token` unless it is already stored. Call only once everything before it is acked."""
        self._saved_at = time.monotonic()
        if token is None or token == self._saved_token:
            return
        self.store.save(Checkpoint(dict(token), self._position, self.stats.published))
        self._saved_token = token

