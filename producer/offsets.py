"""Where the producer is (as Debezium's offset context): the last event's source position, the
reconcile's cut, and the resume token, persisted only once Kafka acknowledged everything before it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from lakehouse.adapters.mongo import cluster_time
from lakehouse.contracts.events import SourcePosition
from lakehouse.core.config import Settings
from producer import metrics
from producer.checkpoint import Checkpoint, FileCheckpointStore
from producer.publishing import EventPublisher, ListenerStats

log = logging.getLogger(__name__)


class SourceOffsets:
    def __init__(self, settings: Settings, store: FileCheckpointStore, publisher: EventPublisher,
                 stats: ListenerStats, interval: float) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.stats = stats
        self.interval = interval  # seconds between persisted tokens while busy
        self.position: SourcePosition | None = None
        # The reconcile's cut (producer/checkpoint.Checkpoint.read_until), and MongoDB's time when the stream
        # was last found idle: the next idle read, later, has seen everything before that time.
        self.read_until: tuple[int, int] | None = None
        self._idle_mark: tuple[int, int] | None = None
        self._saved_at = 0.0
        self._saved_token: Mapping[str, Any] | None = None
        self._saved_read_until: tuple[int, int] | None = None

    def restore(self, checkpoint: Checkpoint | None) -> None:
        """Carry on from `checkpoint` (None: from nothing, a new copy)."""
        self.read_until, self._idle_mark = (checkpoint.read_until if checkpoint else None), None
        if checkpoint is None:
            self.publisher.acked = {}
            return
        self.position = checkpoint.position
        self.stats.published = checkpoint.events_published
        self.publisher.acked = dict(checkpoint.acked_offsets)

    def advance(self, seconds: int, inc: int) -> SourcePosition:
        """The position of the next event, at cluster time (seconds, inc)."""
        self.position = self.position.next_for(seconds, inc) if self.position else SourcePosition(seconds, inc, 0)
        return self.position

    def published_batch(self) -> None:
        """A batch was acknowledged: everything up to its last event is in Kafka."""
        self._idle_mark = None
        if self.position is not None:
            self._passed((self.position.cluster_time_s, self.position.cluster_time_inc))

    def _passed(self, at: tuple[int, int]) -> None:
        if self.read_until is None or at > self.read_until:
            self.read_until = at

    def idle(self, db: Any) -> None:
        """The stream had nothing: everything before the time taken at the previous idle read is read."""
        if self._idle_mark is not None:
            self._passed(self._idle_mark)
        try:
            now = cluster_time(db)
            self._idle_mark = (now.time, now.inc)
        except Exception as exc:  # noqa: BLE001 - only the cut waits; the stream's own errors come from it
            log.debug("cannot read MongoDB's cluster time (%s)", exc)
            self._idle_mark = None

    def due(self) -> bool:
        return time.monotonic() - self._saved_at >= self.interval

    def save(self, token: Mapping[str, Any] | None, again: bool = False) -> None:
        """Persist `token` unless it is already stored (`again`: store it all the same, e.g. with new
        collections recorded). Call only once everything before it is acknowledged."""
        self._saved_at = time.monotonic()
        if again:
            self._saved_token = None
        # An idle stream's token may not move while the cluster time does: the cut moves on all the same.
        if token is None or (token == self._saved_token and self.read_until == self._saved_read_until):
            return
        self.store.save(Checkpoint(dict(token), self.position, self.stats.published, dict(self.publisher.acked),
                                   tuple(self.settings.collections), self.read_until))
        self._saved_token, self._saved_read_until = token, self.read_until
        metrics.PRODUCER_TOKEN_SAVED.set_to_current_time()
        if self.position is not None:
            metrics.PRODUCER_LAST_CHANGE.set(self.position.cluster_time_s)
