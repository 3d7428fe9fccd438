"""A Kafka source for Structured Streaming built on PySpark's Python Data Source API.

Why: Spark's own Kafka source lives in the spark-sql-kafka jar, which only Maven serves, and Maven is
out of reach here. This source has the same columns as Spark's (key, value, topic, partition,
offset, timestamp, timestampType, headers) and the same options (`kafka.bootstrap.servers`,
`subscribe`, `startingOffsets`, `maxOffsetsPerTrigger`), so on a cluster with the jars
`format("kafka")` replaces it. Offsets are a flat dict {"topic:partition": next offset}, which Spark
checkpoints; a restarted query re-reads exactly the planned range of an unfinished batch.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

SOURCE_NAME = "kafka_py"
KAFKA_SCHEMA = (
    "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, timestamp TIMESTAMP, "
    "timestampType INT, headers ARRAY<STRUCT<key: STRING, value: BINARY>>"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _split(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


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
        self._consumer: Any = None
        self._available_now_end: dict[str, int] | None = None

    # The driver keeps one metadata consumer for offsets; executors make their own in read().
    def _meta(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        return self._consumer

    def _partitions(self) -> list[Any]:
        from kafka import TopicPartition

        consumer = self._meta()
        found = []
        for topic in self.topics:
            parts = consumer.partitions_for_topic(topic) or set()
            found.extend(TopicPartition(topic, p) for p in sorted(parts))
        return found

    def initialOffset(self) -> dict[str, int]:
        tps = self._partitions()
        if not tps:
            return {}
        consumer = self._meta()
        if self.starting_at is not None:
            # As Spark's Kafka source: -2 is the beginning, -1 the end; partitions not named start at
            # their end (nothing is read from them).
            begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
            chosen = {}
            for tp in tps:
                wanted = self.starting_at.get(_key(tp.topic, tp.partition), -1)
                chosen[tp] = begins[tp] if wanted == -2 else ends[tp] if wanted == -1 else wanted
            offsets = chosen
        else:
            offsets = consumer.end_offsets(tps) if self.starting == "latest" else consumer.beginning_offsets(tps)
        return {_key(tp.topic, tp.partition): int(o) for tp, o in offsets.items()}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def _end_offsets(self) -> dict[str, int]:
        tps = self._partitions()
        return {_key(tp.topic, tp.partition): int(o) for tp, o in self._meta().end_offsets(tps).items()}

    def prepareForTriggerAvailableNow(self) -> None:
        """Available-now reads up to the end offsets of this moment, in batches of the read limit."""
        self._available_now_end = self._end_offsets()

    def latestOffset(self, start: dict[str, int], limit: ReadLimit) -> dict[str, int]:
        tps = self._partitions()
        consumer = self._meta()
        ends = self._available_now_end if self._available_now_end is not None else self._end_offsets()
        if tps:
            # Partitions added since the start offset begin at their beginning.
            begins = {_key(tp.topic, tp.partition): int(o) for tp, o in consumer.beginning_offsets(tps).items()}
        else:
            begins = {}
        current = {k: start.get(k, begins.get(k, 0)) for k in ends}
        if not isinstance(limit, ReadMaxRows):
            return {**start, **ends}
        return {**start, **share_budget(current, ends, limit.max_rows)}

    def partitions(self, start: dict[str, int], end: dict[str, int]) -> list[KafkaRange]:
        ranges = []
        for key, until in sorted(end.items()):
            topic, partition = _split(key)
            since = start.get(key, 0)
            if until > since:
                ranges.append(KafkaRange(topic, partition, since, until))
        return ranges

    def read(self, partition: KafkaRange) -> Iterator[tuple[Any, ...]]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        try:
            tp = TopicPartition(partition.topic, partition.partition)
            consumer.assign([tp])
            consumer.seek(tp, partition.start)
            position = partition.start
            empty_polls = 0
            while position < partition.end:
                records = consumer.poll(timeout_ms=1000).get(tp, [])
                if not records:
                    empty_polls += 1
                    if empty_polls > 60:
                        raise RuntimeError(
                            f"Kafka returned nothing for {partition.topic}[{partition.partition}] at "
                            f"offset {position} (planned up to {partition.end}) for 60s; is the broker up?"
                        )
                    continue
                empty_polls = 0
                for record in records:
                    if record.offset >= partition.end:
                        break
                    yield (
                        record.key,
                        record.value,
                        record.topic,
                        record.partition,
                        record.offset,
                        _EPOCH + dt.timedelta(milliseconds=record.timestamp),
                        record.timestamp_type,
                        [(k, v) for k, v in (record.headers or [])],
                    )
                # Position, not count: compacted offsets and transaction markers leave gaps.
                position = consumer.position(tp)
        finally:
            consumer.close()

    def commit(self, end: dict[str, int]) -> None:
        """Nothing to do: Spark's checkpoint, not Kafka's group offsets, is the source of truth."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class KafkaPyDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return KAFKA_SCHEMA

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(dict(self.options))
