"""The initial copy (as Debezium's snapshot source): every document of the named collections as of one
cluster time, then each collection's snapshot_end. The change stream is opened before the copy and read
from that time after it, so nothing is missed and a change both copied and streamed sorts after its copy."""

from __future__ import annotations

import logging
from typing import Any

from lakehouse.contracts import events
from lakehouse.core.config import Settings
from lakehouse.core.progress import Progress
from producer.checkpoint import Checkpoint
from producer.publishing import EventPublisher, ListenerStats, Outgoing, Stopped

log = logging.getLogger(__name__)


class Snapshotter:
    def __init__(self, settings: Settings, db: Any, publisher: EventPublisher, stats: ListenerStats,
                 keys: dict[str, str], batch_size: int) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.stats = stats
        self.keys = keys  # each captured collection's key field (collections.toml)
        self.batch_size = batch_size

    def copy(self, names: tuple[str, ...], at: tuple[int, int]) -> None:
        """Publish every document of `names` as of cluster time `at`, then each one's snapshot_end. A stop
        request abandons the copy between batches (Stopped): no token says it was made, so the next start
        copies again (a copy is one more version of each document, never a loss)."""
        expected = sum(self.db[name].estimated_document_count() for name in names)
        with Progress("snapshot", total=expected, unit="documents") as progress:
            for name in names:
                topic = self.settings.topic_for(name)
                batch: list[Outgoing] = []
                for document in self.db[name].find().sort("_id", 1):
                    envelope = events.from_snapshot(self.settings.mongo_db, name, document, at, self.keys[name])
                    batch.extend(self.publisher.outgoing(topic, envelope, document))
                    if len(batch) >= self.batch_size:
                        self._publish(batch, progress)
                        batch = []
                self._publish(batch, progress)
                self.publisher.publish(self.publisher.outgoing(
                    topic, events.snapshot_end(self.settings.mongo_db, name, at), None))

    def _publish(self, batch: list[Outgoing], progress: Progress) -> None:
        self.publisher.publish(batch)
        self.stats.snapshots += len(batch)
        progress.advance(len(batch))
        if self.publisher.stopping():
            log.warning("stopped during the snapshot, after %d documents: no token is saved, so the next start "
                        "copies again", progress.done)
            raise Stopped


def new_collections(settings: Settings, checkpoint: Checkpoint) -> tuple[str, ...]:
    """Collections captured now that the token's run did not capture (added to collections.toml or
    COLLECTIONS). When the checkpoint does not say, every one (a copy is one more version, never a loss)."""
    before = checkpoint.collections or ()
    return tuple(name for name in settings.collections if name not in before)
