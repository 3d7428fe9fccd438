"""The Kafka source's checkpointed positions, as Spark stores them in its offsets log.

One JSON object per batch: {"topic:partition": position}. A position is
`[next offset, fingerprint of the record before it, (read from)]`; checkpoints written before
fingerprints hold a bare next offset. Shared by the source (streaming/kafka_source.py) and the
readers of its checkpoint (status, replay), which must not need Spark to read it.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any


def partition_key(topic: str, partition: int) -> str:
    """How a topic partition is named in positions and everywhere above the Kafka adapter."""
    return f"{topic}:{partition}"


def split_key(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


def position(value: Any) -> tuple[int, str | None, int | None]:
    """(next offset, fingerprint of the record before it, read-from override)."""
    if isinstance(value, list):
        return int(value[0]), value[1] if len(value) > 1 else None, value[2] if len(value) > 2 else None
    return int(value), None, None


def next_offset(value: Any) -> int:
    return position(value)[0]


def fingerprint(offset: int, timestamp_ms: int, value: bytes | None) -> str:
    """Which record sits at an offset: its offset, time and a checksum of its value."""
    return f"{offset}:{timestamp_ms}:{zlib.crc32(value or b'')}"


def fingerprint_time(fingerprint_text: str) -> int:
    """The record time (ms) a fingerprint holds."""
    return int(fingerprint_text.split(":")[1])


def committed_offsets(checkpoint: Path) -> dict[str, int]:
    """The next offsets of the newest batch the lake query has committed ({"topic:partition": offset})."""
    commits = [int(p.name) for p in (checkpoint / "commits").glob("[0-9]*")]
    if not commits:
        return {}
    lines = (checkpoint / "offsets" / str(max(commits))).read_text().splitlines()
    return {k: next_offset(v) for k, v in json.loads(lines[2]).items()} if len(lines) > 2 else {}
