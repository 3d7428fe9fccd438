"""Durable store for the change stream's resume token.

Written only after Kafka acknowledged everything before it, and atomically (temp file, fsync,
rename, fsync the folder), so a kill -9 at any moment leaves either the old or the new token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.events import SourcePosition
from lakehouse.files import write_json_atomically


@dataclass(frozen=True)
class Checkpoint:
    resume_token: dict[str, Any]
    position: SourcePosition | None  # of the last acknowledged event; None after a heartbeat-only run
    events_published: int = 0


class FileCheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"producer checkpoint {self.path} is unreadable ({exc}); move it away and restart "
                "with --snapshot initial to rebuild the stream from a fresh copy"
            ) from exc
        pos = raw.get("position")
        return Checkpoint(
            resume_token=raw["resume_token"],
            position=SourcePosition(**pos) if pos else None,
            events_published=int(raw.get("events_published", 0)),
        )

    def save(self, checkpoint: Checkpoint) -> None:
        write_json_atomically(self.path, {
            "resume_token": checkpoint.resume_token,
            "position": checkpoint.position.__dict__ if checkpoint.position else None,
            "events_published": checkpoint.events_published,
        })

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
