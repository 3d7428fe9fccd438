"""The streaming job's record of each micro-batch (one JSON line in data/state/spark/batches.jsonl):
the streaming job appends it, `status`, the metrics and replay read it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BatchRecord:
    batch_id: int
    input_rows: int = 0  # Kafka messages the batch read
    already_in_lake: int = 0  # of which a replay found in the lake already (skipped)
    silver_rows: int = 0
    quarantined: int = 0
    late: int = 0  # silver rows behind the watermark (also in late_events)
    quality_quarantined: int = 0  # of `quarantined`, those a quality rule of severity quarantine kept out
    flagged: int = 0  # silver rows that broke a quality rule of severity flag
    quality: dict[str, list[int]] = field(default_factory=dict)  # rule -> [changes checked, failed]
    new_fields: list[str] = field(default_factory=list)  # top-level fields the envelope does not know
    watermark: str | None = None  # ISO 8601
    spark_ms: int = 0  # judging and counting the batch in Spark; the rest of duration_ms is writing
    collected_bytes: int = 0  # 0 since the tables are written from the executors (records of older jobs kept it)
    duration_ms: int = 0
    phases_ms: dict[str, int] = field(default_factory=dict)  # where duration_ms went (streaming/job.py's phases)
    at: str = ""  # when it ended, ISO 8601

    @classmethod
    def from_json(cls, line: str) -> BatchRecord:
        """A line as written by any version of the job: unknown keys are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(line).items() if k in known})


def append(path: Path, record: BatchRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = record if record.at else BatchRecord(**{**asdict(record),
                                                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    with path.open("a") as handle:
        handle.write(json.dumps(asdict(stamped)) + "\n")


def read(path: Path) -> list[BatchRecord]:
    """The batches in order; a batch Spark replayed after a crash wrote its line again: the last one counts."""
    last: dict[int, BatchRecord] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = BatchRecord.from_json(line)
                last[record.batch_id] = record
    return [last[k] for k in sorted(last)]


def totals(records: list[BatchRecord]) -> dict[str, Any]:
    keys = ("input_rows", "already_in_lake", "silver_rows", "quarantined", "late", "quality_quarantined", "flagged")
    return {k: sum(getattr(r, k) for r in records) for k in keys}


def quality_totals(records: list[BatchRecord]) -> dict[str, list[int]]:
    """rule -> [changes checked, failed] over the batches."""
    out: dict[str, list[int]] = {}
    for record in records:
        for rule, (checked, failed) in record.quality.items():
            total = out.setdefault(rule, [0, 0])
            total[0] += checked
            total[1] += failed
    return dict(sorted(out.items()))
