"""The lake query's event-time watermark, to find late events before the aggregates drop them.

Same rule as Spark's `withWatermark`: the watermark for batch N is the largest event time seen in
batches before N, minus the delay. It is persisted per batch, so a batch Spark replays after a crash
is judged against the same watermark as the first time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lakehouse.core.files import write_json_atomically

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MICROS = 1_000_000


def delay_seconds(delay: str) -> int:
    """ "10 minutes" -> 600. The same strings Spark's withWatermark takes."""
    match = re.fullmatch(r"\s*(\d+)\s*(second|minute|hour|day)s?\s*", delay)
    if not match:
        raise ValueError(f"watermark delay {delay!r} is not like '10 minutes' (seconds, minutes, hours, days)")
    return int(match.group(1)) * _UNITS[match.group(2)]


class WatermarkTracker:
    def __init__(self, path: Path, delay: str) -> None:
        self.path = path
        self.delay_micros = delay_seconds(delay) * MICROS

    def _load(self) -> dict[str, int | None] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None

    def for_batch(self, batch_id: int) -> int | None:
        """Watermark (epoch microseconds) in force for `batch_id`; None before any event was seen."""
        state = self._load()
        if state is None:
            return None
        return state["used"] if state["batch_id"] == batch_id else state["after"]

    def advance(self, batch_id: int, used: int | None, max_event_micros: int | None) -> int | None:
        candidates = [w for w in (used, None if max_event_micros is None else max_event_micros - self.delay_micros)
                      if w is not None]
        after = max(candidates) if candidates else None
        write_json_atomically(self.path, {"batch_id": batch_id, "used": used, "after": after})
        return after
