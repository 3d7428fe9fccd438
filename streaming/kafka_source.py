"""A Kafka source for Structured Streaming built on PySpark's Python Data Source API.

Why: Spark's own Kafka source lives in the spark-sql-kafka jar, which only Maven serves, and Maven is
out of reach here. This source has the same columns as Spark's (key, value, topic, partition,
offset, timestamp, timestampType, headers) and the same options (`kafka.bootstrap.servers`,
`subscribe`, `startingOffsets`, `maxOffsetsPerTrigger`), so on a cluster with the jars
`format("kafka")` replaces it. Offsets are a dict {"topic:partition": position}, which Spark
checkpoints; a restarted query re-reads exactly the planned range of an unfinished batch.

A position is `[next offset, fingerprint of the record before it, (read from)]` (older checkpoints
hold a bare next offset). Like Spark's own source with `failOnDataLoss`, every trigger checks that
the broker still holds what the query has read: the end offset went back, the records were deleted
(retention), or the record before the position is no longer the one read (the broker lost records
and re-used their offsets for new ones). A loss is logged with the partition and range, appended to
the `dataLossLog` file (status and metrics read it), and the query goes on from what the broker holds
now, re-reading re-used offsets so no new record is skipped; with `failOnDataLoss=true` (Spark's
default) the query stops instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from lakehouse.adapters.kafka import OffsetReader, read_partition
from lakehouse.contracts.positions import fingerprint, fingerprint_time, next_offset, position
from lakehouse.contracts.positions import partition_key as _key
from lakehouse.contracts.positions import split_key as _split
from lakehouse.core.errors import Permanent

SOURCE_NAME = "kafka_py"
KAFKA_SCHEMA = (
    "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, timestamp TIMESTAMP, "
    "timestampType INT, headers ARRAY<STRUCT<key: STRING, value: BINARY>>"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
log = logging.getLogger(__name__)


class KafkaDataLoss(Permanent, RuntimeError):
    """The broker no longer holds records the query has read or planned (failOnDataLoss=true)."""


def find_losses(start: dict[str, Any], begins: dict[str, int], ends: dict[str, int],
                records: dict[str, str | None]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Where each partition's next batch starts, and the losses found: the end went back below the
    position, records before it were deleted, or the record before it is another one now (`records`:
    the fingerprint of the record now at position - 1)."""
    current: dict[str, int] = {}
    losses: list[dict[str, Any]] = []
    for key in ends:
        if key not in start:
            current[key] = begins.get(key, 0)
            continue
        offset, seen, _ = position(start[key])
        if ends[key] < offset:
            # Records below the new end may be new ones at re-used offsets too: with a fingerprint the
            # caller finds where they begin (None); without one, reading resumes at the end.
            losses.append({"partition": key, "from": ends[key] if seen is None else None, "to": offset,
                           "reason": f"end offset went back from {offset} to {ends[key]}"})
            current[key] = ends[key]
        elif begins.get(key, 0) > offset:
            losses.append({"partition": key, "from": offset, "to": begins[key],
                           "reason": "records were deleted before they were read (retention or topic re-created)"})
            current[key] = begins[key]
        elif seen is not None and key in records and records[key] != seen:
            losses.append({"partition": key, "from": None, "to": offset,
                           "reason": f"offset {offset - 1} holds another record than the one read ({records[key]} "
                                     f"instead of {seen}): the broker lost records and re-used their offsets"})
            current[key] = offset  # refined by the caller: re-read from where the new records begin
        else:
            current[key] = offset
    return current, losses


def share_budget(current: dict[str, int], ends: dict[str, int], budget: int) -> dict[str, int]:
    """Advance partitions from `current` towards `ends` by at most `budget` rows in all, shared
    fairly so that no partition with data starves behind a busy one."""
    result = dict(current)
    pending = {k: ends[k] - current[k] for k in ends if ends[k] > current[k]}
    while budget > 0 and pending:
        share = max(1, budget // len(pending))
        for k in sorted(pending):
            take = min(share, pending[k], budget)
            result[k] += take
            pending[k] -= take
            budget -= take
            if pending[k] == 0:
                del pending[k]
            if budget == 0:
                break
    return result


def _parse_starting_offsets(text: str) -> dict[str, int]:
    """Spark's JSON form, {"topic": {"0": 23, "1": -2}}, to {"topic:0": 23, "topic:1": -2}."""
    try:
        parsed = json.loads(text)
        return {_key(topic, int(p)): int(o) for topic, parts in parsed.items() for p, o in parts.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f'startingOffsets JSON must look like {{"topic": {{"0": 23}}}}, not {text!r}') from exc


class KafkaRange(InputPartition):
    """One topic-partition's offsets [start, end) for one batch."""

    def __init__(self, topic: str, partition: int, start: int, end: int) -> None:
        super().__init__((topic, partition, start, end))
        self.topic, self.partition, self.start, self.end = topic, partition, start, end


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: dict[str, str]) -> None:
        options = {k.lower(): v for k, v in options.items()}  # Spark hands option names lower-cased
        missing = [name for name in ("kafka.bootstrap.servers", "subscribe") if not options.get(name)]
        if missing:
            raise ValueError(f"the {SOURCE_NAME} source needs the option(s) {', '.join(missing)}")
        self.bootstrap = options["kafka.bootstrap.servers"]
        self.topics = [t.strip() for t in options["subscribe"].split(",") if t.strip()]
        self.starting = options.get("startingoffsets", "earliest")
        self.starting_at: dict[str, int] | None = None
        if self.starting.lstrip().startswith("{"):
            self.starting_at = _parse_starting_offsets(self.starting)
        elif self.starting not in ("earliest", "latest"):
            raise ValueError(f"startingOffsets must be earliest, latest or JSON offsets, not {self.starting!r}")
        max_rows = options.get("maxoffsetspertrigger")
        self.max_rows = int(max_rows) if max_rows else None
        fail = options.get("failondataloss", "true").strip().lower()
        if fail not in ("true", "false"):
            raise ValueError(f"failOnDataLoss must be true or false, not {fail!r}")
        self.fail_on_data_loss = fail == "true"
        self.loss_log = Path(options["datalosslog"]) if options.get("datalosslog") else None
        self._kafka: OffsetReader | None = None
        self._available_now_end: dict[str, int] | None = None

    # The driver keeps one reader for offsets; executors read their ranges with their own consumers.
    def _reader(self) -> OffsetReader:
        if self._kafka is None:
            self._kafka = OffsetReader(self.bootstrap)
        return self._kafka

    def _partitions(self) -> list[str]:
        return self._reader().partitions(self.topics)

    def initialOffset(self) -> dict[str, Any]:
        keys = self._partitions()
        if not keys:
            return {}
        reader = self._reader()
        if self.starting_at is not None:
            # As Spark's Kafka source: -2 is the beginning, -1 the end; partitions not named start at
            # their end (nothing is read from them).
            begins, ends = reader.begin_offsets(keys), reader.end_offsets(keys)
            offsets = {}
            for key in keys:
                wanted = self.starting_at.get(key, -1)
                offsets[key] = begins[key] if wanted == -2 else ends[key] if wanted == -1 else wanted
        else:
            offsets = reader.end_offsets(keys) if self.starting == "latest" else reader.begin_offsets(keys)
        return self._positions(offsets)

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def _end_offsets(self, keys: list[str] | None = None) -> dict[str, int]:
        return self._reader().end_offsets(self._partitions() if keys is None else keys)

    def prepareForTriggerAvailableNow(self) -> None:
        """Available-now reads up to the end offsets of this moment, in batches of the read limit."""
        self._available_now_end = self._end_offsets()

    def _begin_offsets(self, keys: list[str]) -> dict[str, int]:
        return self._reader().begin_offsets(keys)

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        keys = self._partitions()  # one metadata look per trigger
        ends_now, begins = self._end_offsets(keys), self._begin_offsets(keys)
        # Is the record before each position still the one the query read?
        checkable = {k: next_offset(v) - 1 for k, v in start.items()
                     if position(v)[1] is not None and begins.get(k, 0) < next_offset(v) <= ends_now.get(k, 0)}
        current, losses = find_losses(start, begins, ends_now, self._fingerprints(checkable))
        for loss in losses:
            if loss["from"] is None:  # offsets re-used: the new records begin after the last one kept
                key = loss["partition"]
                seen = position(start[key])[1]  # find_losses leaves "from" open only where there is one
                loss["from"] = self._first_offset_at(key, fingerprint_time(seen), begins.get(key, 0),
                                                     min(loss["to"] - 1, ends_now.get(key, 0)))
                current[key] = loss["from"]
        if losses:
            self._report(losses)
        ends = ends_now
        if self._available_now_end is not None:
            ends = {k: min(v, ends_now.get(k, v)) for k, v in self._available_now_end.items()}
        ends = {k: max(v, current.get(k, 0)) for k, v in ends.items()}
        targets = ends if not isinstance(limit, ReadMaxRows) else share_budget(
            {k: current.get(k, 0) for k in ends}, ends, limit.max_rows)
        result = {**{k: next_offset(v) for k, v in start.items()}, **targets}
        reads_from = {k: o for k, o in current.items() if (k in start and o != next_offset(start[k]))
                      or (k not in start and o > 0)}
        return self._positions(result, reads_from, previous=start)

    def _positions(self, offsets: dict[str, int], reads_from: dict[str, int] | None = None,
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """Offsets as checkpointed positions, each with the fingerprint of the record before it."""
        previous, reads_from = previous or {}, reads_from or {}
        known = {k: position(previous[k])[1] for k, o in offsets.items()
                 if k in previous and k not in reads_from and next_offset(previous[k]) == o}
        found = self._fingerprints({k: o - 1 for k, o in offsets.items() if o > 0 and known.get(k) is None})
        result: dict[str, Any] = {}
        for key, offset in offsets.items():
            seen = known.get(key) or found.get(key)
            result[key] = [offset, seen] if key not in reads_from else [offset, seen, reads_from[key]]
        return result

    def _fingerprints(self, wanted: dict[str, int]) -> dict[str, str | None]:
        """The fingerprint of the record at each wanted offset (None when there is none, e.g. a gap)."""
        return {key: None if record is None else fingerprint(record.offset, record.timestamp, record.value)
                for key, record in self._reader().records_at(wanted).items()}

    def _first_offset_at(self, key: str, timestamp_ms: int, floor: int, ceiling: int) -> int:
        """Where records written at or after `timestamp_ms` (the time of the last record read) begin, at
        most `ceiling`: with the broker's offsets re-used, the records from there on were not read before
        (a record written in the same millisecond and kept is read again: the warehouse keeps it once)."""
        found = self._reader().first_offset_at(key, timestamp_ms)
        at = found if found is not None else ceiling
        return max(floor, min(at, ceiling))

    def _report(self, losses: list[dict[str, Any]]) -> None:
        lines = [f"{loss['partition']} offsets {loss['from']}..{loss['to'] - 1}: {loss['reason']}" for loss in losses]
        if self.fail_on_data_loss:
            raise KafkaDataLoss(
                "Kafka no longer holds records this query read or planned to read: " + "; ".join(lines)
                + ". Set failOnDataLoss=false (KAFKA_FAIL_ON_DATA_LOSS=false) to record such losses and go on from "
                "what the broker holds, then repair the warehouse with `lakehouse reconcile --repair`"
            )
        for line in lines:
            log.error("KAFKA DATA LOSS: %s; going on from what the broker holds now", line)
        if self.loss_log is not None:
            self.loss_log.parent.mkdir(parents=True, exist_ok=True)
            with self.loss_log.open("a") as handle:
                for loss in losses:
                    topic, partition = _split(loss["partition"])
                    handle.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "topic": topic,
                                             "partition": partition, "from": loss["from"], "to": loss["to"],
                                             "reason": loss["reason"]}) + "\n")

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> list[KafkaRange]:
        ranges = []
        for key, value in sorted(end.items()):
            topic, partition = _split(key)
            until, _, reads_from = position(value)
            since = reads_from if reads_from is not None else next_offset(start[key]) if key in start else 0
            if until > since:
                ranges.append(KafkaRange(topic, partition, since, until))
        return ranges

    def read(self, partition: KafkaRange) -> Iterator[tuple[Any, ...]]:
        for record in read_partition(self.bootstrap, partition.topic, partition.partition, partition.start,
                                     partition.end):
            yield (record.key, record.value, record.topic, record.partition, record.offset,
                   _EPOCH + dt.timedelta(milliseconds=record.timestamp), record.timestamp_type, record.headers)

    def commit(self, end: dict[str, int]) -> None:
        """Nothing to do: Spark's checkpoint, not Kafka's group offsets, is the source of truth."""

    def stop(self) -> None:
        if self._kafka is not None:
            self._kafka.close()
        self._kafka = None


class KafkaPyDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return KAFKA_SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(dict(self.options))
