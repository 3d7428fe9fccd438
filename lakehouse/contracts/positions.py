"""The lake query's Kafka positions, as Spark's Kafka source stores them in its offsets log.

One JSON line per source and batch: {"topic": {"partition": next offset}}. Checkpoints of the earlier
Python source (streaming/kafka_source.py, removed) held {"topic:partition": position}, a position being a
bare next offset or `[next offset, fingerprint, (read from)]`: `read_offsets` reads both, and the
streaming job rewrites such a checkpoint in Spark's form (streaming/kafka_losses.migrate_checkpoint).
Readers of the checkpoint (status, replay, reconcile) must not need Spark to read it.
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


def read_offsets(source_line: str) -> dict[str, int]:
    """{"topic:partition": next offset} from one source line of an offsets log file, either form."""
    data = json.loads(source_line)
    out: dict[str, int] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # Spark's Kafka source
            out.update({partition_key(key, int(p)): int(o) for p, o in value.items()})
        else:  # the earlier Python source
            out[key] = next_offset(value)
    return out


def is_spark_form(source_line: str) -> bool:
    data = json.loads(source_line)
    return all(isinstance(value, dict) for value in data.values())


def spark_form(offsets: dict[str, int]) -> str:
    """{"topic:partition": offset} as Spark's Kafka source writes it."""
    grouped: dict[str, dict[str, int]] = {}
    for key, offset in offsets.items():
        topic, partition = split_key(key)
        grouped.setdefault(topic, {})[str(partition)] = offset
    return json.dumps(grouped, separators=(",", ":"))


def batch_offsets(checkpoint: Path, batch_id: int) -> dict[str, int]:
    """The next offsets at the end of a planned batch of the lake query ({} when it has none)."""
    path = checkpoint / "offsets" / str(batch_id)
    lines = path.read_text().splitlines() if path.exists() else []
    return read_offsets(lines[2]) if len(lines) > 2 else {}


def committed_offsets(checkpoint: Path) -> dict[str, int]:
    """The next offsets of the newest batch the lake query has committed ({"topic:partition": offset})."""
    commits = [int(p.name) for p in (checkpoint / "commits").glob("[0-9]*")]
    return batch_offsets(checkpoint, max(commits)) if commits else {}
