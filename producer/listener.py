"""MongoDB change stream -> Kafka, at least once with deterministic change_ids.

The loop reads a batch of events, publishes it (acks=all, idempotent), waits for every ack, and only
then persists the resume token of the batch's last event. A crash therefore repeats at most the
unacknowledged batch, and every repeated event carries the same change_id.

One class per concern, as Debezium's MongoDB connector: the listener streams and decides what to do
when resuming fails; producer/snapshot.py copies, producer/publishing.py sends and knows what Kafka
holds, producer/offsets.py persists where the stream is, producer/lifecycle.py handles whole-collection
events.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from lakehouse.adapters import explain
from lakehouse.adapters.kafka import ensure_topics
from lakehouse.adapters.mongo import ChangeStream, HistoryLost, cluster_time, enable_pre_images, require_replica_set
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import events
from lakehouse.core.backoff import AwayEpisode
from lakehouse.core.config import Settings, for_stage
from lakehouse.core.errors import ConfigError, Permanent, Transient
from lakehouse.core.progress import Progress
from producer import lifecycle, metrics
from producer.checkpoint import Checkpoint, FileCheckpointStore
from producer.offsets import SourceOffsets
from producer.publishing import EventPublisher, KafkaDataLost, ListenerStats, Outgoing, Stopped
from producer.snapshot import Snapshotter, new_collections

log = logging.getLogger(__name__)

SNAPSHOT_MODES = ("initial", "never", "when_needed")


class CannotResume(Permanent, RuntimeError):
    """The change stream cannot resume where Kafka has it, and re-snapshotting was not allowed."""


def watch_pipeline(settings: Settings) -> list[dict[str, Any]]:
    """The configured collections' changes out of the database-level stream, and the lifecycle events
    that concern them: a drop or rename of one, a rename onto one, the database dropped (and the
    invalidate that follows it; a filter that hid it would leave the stream dead without a word)."""
    settings = for_stage(settings, "producer")
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
        settings = for_stage(settings, "producer")
        if snapshot_mode not in SNAPSHOT_MODES:
            raise ConfigError(f"--snapshot must be one of {SNAPSHOT_MODES}, not {snapshot_mode!r}")
        self.settings = settings
        self.snapshot_mode = snapshot_mode
        self.batch_size = batch_size
        self.start_at = start_at
        self.store = FileCheckpointStore(settings.producer_checkpoint)
        self.client = connect_mongo(settings, "lakehouse-producer")
        self.db = self.client[settings.mongo_db]
        self.stats = ListenerStats()
        self._stopping = False
        self.publisher = EventPublisher(settings, self.stats, self.store, lambda: self._stopping)
        self.offsets = SourceOffsets(settings, self.store, self.publisher, self.stats, checkpoint_interval)
        # Each captured collection's key field, read from the spec once (not per event: a file stat each).
        self._keys = {name: settings.collection(name).key for name in settings.collections}
        self.snapshotter = Snapshotter(settings, self.db, self.publisher, self.stats, self._keys, batch_size)
        self._without_pre_images: dict[str, str] = {}  # collection -> why it has none (tried again each batch)
        self._pre_images_tried = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def close(self) -> None:
        self.publisher.close()
        self.client.close()

    def prepare(self) -> None:
        require_replica_set(self.client, self.settings)
        ensure_topics(self.settings, [*self.settings.topics, self.settings.dead_letter_topic])
        for name in self.settings.collections:
            self._enable_pre_images(name)

    def _enable_pre_images(self, name: str) -> None:
        """Pre-images give deletes their key field (the Kafka key); without them deletes key by _id."""
        refused = enable_pre_images(self.db, name)
        if refused:
            log.warning("could not enable pre-images on %s.%s (%s); deletes will be keyed by _id",
                        self.settings.mongo_db, name, refused)

    # -- the loop, and what to do when it cannot resume -------------------------------------------
    def run(self, until_idle: bool = False) -> ListenerStats:
        """Stream until stopped (or, with until_idle, until the stream has nothing new)."""
        self.prepare()
        while not self._stopping:
            checkpoint = self.store.load()
            try:
                self.offsets.restore(checkpoint)
                if checkpoint is None:
                    if self.snapshot_mode == "never":
                        self._stream(self._open_stream(None, start_at=self.start_at), until_idle)
                    else:
                        self._snapshot_then_stream(until_idle)
                else:
                    self.publisher.check_broker_holds()
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

    def _open_stream(self, resume_token: Mapping[str, Any] | None, start_at: Any = None) -> ChangeStream:
        return ChangeStream(self.db, watch_pipeline(self.settings), resume_token, start_at,
                            prefetch=2 * self.batch_size)

    def _snapshot_then_stream(self, until_idle: bool) -> None:
        """Open the stream first, copy, then stream from the opening point: nothing is missed, and
        a change both copied and streamed sorts after its snapshot copy."""
        opened_at = cluster_time(self.db)
        stream = self._open_stream(None, start_at=opened_at)
        self.snapshotter.copy(self.settings.collections, (opened_at.time, opened_at.inc))
        self.offsets.save(stream.resume_token)
        self._stream(stream, until_idle)

    def _copy_new_collections(self, checkpoint: Checkpoint, stream: ChangeStream) -> None:
        """Collections the token's run did not capture are copied first, as of now: the stream then
        carries their later changes."""
        new = new_collections(self.settings, checkpoint)
        if not new:
            return
        at = cluster_time(self.db)
        log.warning("collection(s) %s are captured now and were not before: copying them as of cluster time %s.%s",
                    ", ".join(new), at.time, at.inc)
        self.snapshotter.copy(new, (at.time, at.inc))
        self.offsets.save(stream.resume_token, again=True)  # the same token, now with the new collections

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
                self._retry_pre_images()
                batch, then = self._read_batch(stream)
                if batch:
                    self.publisher.publish(batch)
                    self.offsets.published_batch()
                    if progress is not None:
                        progress.advance(len(batch))
                elif then is None:
                    self.offsets.idle(self.db)
                if then is not None:
                    stream = self._after_lifecycle(stream, *then)
                    continue
                if not batch or self.offsets.due():
                    self.offsets.save(stream.resume_token)
                if progress is None and time.monotonic() - last_progress > 5 and self.stats.published != logged:
                    last_progress, logged = time.monotonic(), self.stats.published
                    log.info("published %d events (%d dead-lettered)", self.stats.published,
                             self.stats.dead_lettered)
                if until_idle and not batch:
                    break
            self.offsets.save(stream.resume_token)
        finally:
            stream.close()
        if progress is not None:
            progress.close()

    def _after_lifecycle(self, stream: Any, kind: str, value: Any) -> Any:
        """What a lifecycle event asks once the events before it are acknowledged: copy a collection
        renamed onto a captured name, or re-open the stream after an invalidate (database dropped)."""
        if kind == "copy":
            at = cluster_time(self.db)
            log.warning("collection %s.%s appeared by a rename: copying it as of cluster time %s.%s",
                        self.settings.mongo_db, value, at.time, at.inc)
            self.snapshotter.copy((value,), (at.time, at.inc))
            self.offsets.save(stream.resume_token)
            return stream
        log.warning("the change stream was invalidated (the database was dropped); opening it again after the "
                    "invalidate event")
        self.offsets.save(value)
        stream.close()
        reopened = self._open_stream(value)
        self._keep_pre_images(self.settings.collections, "the database was dropped")
        return reopened

    def _keep_pre_images(self, names: Iterable[str], why: str) -> None:
        """A dropped collection takes its pre-image setting with it; one made again by the next insert
        would key its deletes by _id, in another partition than the document's other changes. So it is made
        again at once, empty, with pre-images on (as `prepare` does at start). While its database is still
        being dropped the server refuses: it is tried again with each batch until it is on."""
        for name in names:
            if enable_pre_images(self.db, name) is None:
                self._without_pre_images.pop(name, None)
                log.warning("%s.%s: %s; made again with pre-images on, so its deletes keep their key",
                            self.settings.mongo_db, name, why)
            else:
                self._without_pre_images.setdefault(name, why)

    def _retry_pre_images(self) -> None:
        """Once a second at most, the collections whose pre-images could not be turned on yet."""
        if self._without_pre_images and time.monotonic() >= self._pre_images_tried + 1.0:
            self._pre_images_tried = time.monotonic()
            for name, why in list(self._without_pre_images.items()):
                self._keep_pre_images([name], why)

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
            if operation in lifecycle.LIFECYCLE_OPERATIONS:
                for topic, envelope in lifecycle.ending_envelopes(self.settings, change):
                    batch.extend(self.publisher.outgoing(topic, envelope, None))
                renamed_to = (change.get("to") or {}).get("coll")
                if operation == "rename" and renamed_to in self.settings.collections:
                    return batch, ("copy", renamed_to)
                gone = (change.get("ns") or {}).get("coll")
                if operation in ("drop", "rename") and gone in self.settings.collections:
                    self._keep_pre_images([gone], "dropped" if operation == "drop" else f"renamed to {renamed_to}")
                continue
            collection = change.get("ns", {}).get("coll")
            if collection not in self.settings.collections:
                continue
            position = self.offsets.advance(change["clusterTime"].time, change["clusterTime"].inc)
            topic = self.settings.topic_for(collection)
            try:
                envelope = events.from_change(change, position, self._keys[collection])
            except Exception as exc:  # an unserialisable document must not stop the stream
                batch.append(self.publisher.dead_letter(topic, change, f"cannot serialise change: {exc!r}"))
                continue
            batch.extend(self.publisher.outgoing(topic, envelope, change))
        return batch, None


def republish(settings: Settings, resume_token: Mapping[str, Any] | None = None, start_at: Any = None,
              snapshot: bool = False) -> ListenerStats:
    """Publish again, with their change_ids, every change after `resume_token` or since cluster time
    `start_at` (a bson Timestamp), or with `snapshot` a fresh copy of every document then the changes
    made meanwhile, until caught up. Runs on a scratch token file: the producer's own is left alone."""
    settings = for_stage(settings, "producer")
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


def serve(settings: Settings, snapshot_mode: str) -> ListenerStats:
    """The producer as a service, until SIGTERM/SIGINT: a server away (at start, or lost on the way) is
    waited for (lakehouse/core/backoff.py) and a new listener resumes from the saved token, as a restart
    would; the process does not end on it. Counted in lakehouse_producer_server_waits."""
    stopping = threading.Event()
    running: list[ChangeStreamListener] = []

    def request_stop(*_: object) -> None:
        stopping.set()
        for listener in running:
            listener.request_stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    episode = AwayEpisode(log)
    while not stopping.is_set():
        listener = None
        started = time.monotonic()
        try:
            listener = ChangeStreamListener(settings, snapshot_mode=snapshot_mode)
            running[:] = [listener]
            if stopping.is_set():
                listener.request_stop()
            return listener.run()
        except Exception as exc:  # noqa: BLE001 - only a server away is waited for; the rest is raised
            known = explain(settings, exc)
            if not isinstance(known, Transient):
                raise
            metrics.PRODUCER_SERVER_WAITS.inc()
            if time.monotonic() - started > 60:  # it ran a while before: a new episode
                episode.over()
            episode.wait(known, stopping)
        finally:
            running.clear()
            if listener is not None:
                try:
                    listener.close()
                except Exception as exc:  # noqa: BLE001 - clients of a server that went away: the next try makes new ones
                    log.debug("closing the listener: %s", exc)
    return ListenerStats()
