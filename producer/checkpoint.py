"""Durable store for the change stream's resume token, and what Kafka acknowledged up to it.

Written only after Kafka acknowledged everything before it, and atomically (temp file, fsync,
rename, fsync the folder), so a kill -9 at any moment leaves either the old or the new token.

Each checkpoint also records, per topic partition, the offset after the last record Kafka
acknowledged (`acked_offsets`), and the file keeps a short journal of earlier checkpoints. A broker
can lose records it acknowledged (an unclean leader election, a topic deleted and re-created, a
broker that does not persist what it acknowledged): when it holds fewer records than acknowledged, the
producer rewinds to the newest journalled checkpoint the broker still fully holds and publishes again
from there (see producer/listener.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lakehouse.contracts.events import SourcePosition
from lakehouse.contracts.formats import Format, OtherFormat
from lakehouse.core.errors import Permanent
from lakehouse.core.files import write_json_atomically


class CheckpointUnreadable(Permanent, RuntimeError):
    """The token file cannot be used; the message says how to start again."""


# The token file's format (lakehouse/contracts/formats.py); a later release adds its upgrade steps here.
CHECKPOINT_FORMAT: Format[dict[str, Any]] = Format(
    "a producer checkpoint", 1, "lakehouse replay --into kafka --from-beginning (or move the file away and run "
    "`lakehouse produce --snapshot initial`)")
JOURNAL_ENTRIES = 300  # checkpoints kept to rewind to; one a second while busy: five minutes of them


@dataclass(frozen=True)
class Checkpoint:
    resume_token: dict[str, Any]
    position: SourcePosition | None  # of the last acknowledged event; None after a heartbeat-only run
    events_published: int = 0
    # "topic:partition" -> offset after the last record Kafka acknowledged, up to this token.
    acked_offsets: dict[str, int] = field(default_factory=dict)
    # The collections captured up to this token (None: not known, so every captured one is copied again).
    collections: tuple[str, ...] | None = None
    # (seconds, inc): every change of a cluster time before this one is published and acknowledged (the
    # last event's time while busy; while idle, a time the stream was read past). A reconcile's cut.
    read_until: tuple[int, int] | None = None


def _entry(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "resume_token": checkpoint.resume_token,
        "position": checkpoint.position.__dict__ if checkpoint.position else None,
        "events_published": checkpoint.events_published,
        "acked_offsets": checkpoint.acked_offsets,
        "collections": list(checkpoint.collections) if checkpoint.collections is not None else None,
        "read_until": list(checkpoint.read_until) if checkpoint.read_until is not None else None,
    }


def _checkpoint(raw: dict[str, Any]) -> Checkpoint:
    pos = raw.get("position")
    return Checkpoint(
        resume_token=raw["resume_token"],
        position=SourcePosition(**pos) if pos else None,
        events_published=int(raw.get("events_published", 0)),
        acked_offsets={k: int(v) for k, v in (raw.get("acked_offsets") or {}).items()},
        collections=tuple(raw["collections"]) if raw.get("collections") is not None else None,
        read_until=(int(raw["read_until"][0]), int(raw["read_until"][1])) if raw.get("read_until") else None,
    )


def shortfall(acked: dict[str, int], held: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Partitions where the broker holds fewer records than were acknowledged: key -> [held, acked)."""
    return {k: (held.get(k, 0), n) for k, n in acked.items() if held.get(k, 0) < n}


class FileCheckpointStore:
    def __init__(self, path: Path, journal_entries: int = JOURNAL_ENTRIES) -> None:
        self.path = path
        self.journal_entries = journal_entries
        self._journal: list[Checkpoint] | None = None  # oldest first; the newest is the current checkpoint

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointUnreadable(
                f"producer checkpoint {self.path} is unreadable ({exc}); move it away and restart "
                "with --snapshot initial to rebuild the stream from a fresh copy"
            ) from exc

    def load(self) -> Checkpoint | None:
        raw = self._read()
        if raw is None:
            self._journal = []
            return None
        if not isinstance(raw, dict):
            raise CheckpointUnreadable(f"producer checkpoint {self.path} is not a checkpoint of this producer; move "
                                       "it away and restart with --snapshot initial to rebuild the stream from a "
                                       "fresh copy")
        try:
            for step in CHECKPOINT_FORMAT.steps(raw.get("format_version"), f"the file {self.path}"):
                step(raw)
        except OtherFormat as exc:
            raise CheckpointUnreadable(str(exc)) from None
        try:
            current = _checkpoint(raw)
            self._journal = [_checkpoint(e) for e in raw.get("journal", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointUnreadable(
                f"producer checkpoint {self.path} is not a checkpoint of this producer ({exc!r}); move it away "
                "and restart with --snapshot initial to rebuild the stream from a fresh copy"
            ) from exc
        if not self._journal or self._journal[-1] != current:
            self._journal.append(current)
        return current

    def journal(self) -> list[Checkpoint]:
        """Checkpoints to rewind to, oldest first; the last one is the current checkpoint."""
        if self._journal is None:
            self.load()
        return list(self._journal or [])

    def save(self, checkpoint: Checkpoint) -> None:
        journal = self.journal()
        # An idle stream moves its token on without publishing: keep one entry per acknowledged state.
        if journal and journal[-1].acked_offsets == checkpoint.acked_offsets:
            journal[-1] = checkpoint
        else:
            journal.append(checkpoint)
        journal = journal[-self.journal_entries:]
        write_json_atomically(self.path, {"format_version": CHECKPOINT_FORMAT.current, **_entry(checkpoint),
                                          "journal": [_entry(c) for c in journal[:-1]]})
        self._journal = journal

    def rewind_to(self, checkpoint: Checkpoint, held: dict[str, int]) -> None:
        """Make `checkpoint` (from the journal) current again; what came after it is forgotten, and what
        the broker holds now becomes the acknowledged position to compare new acknowledgements with."""
        journal = self.journal()
        kept = journal[: journal.index(checkpoint)]
        self._journal = kept
        self.save(replace(checkpoint, acked_offsets={**checkpoint.acked_offsets, **held}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._journal = []
