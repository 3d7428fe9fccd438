"""Idempotent Delta and Parquet writes of a micro-batch, from the executors (delta-spark).

Each table's batch is appended once (`OnceAppender`): every commit carries its writer's and batch's mark,
and a batch Spark replays after a crash is not appended where its mark already is.
The tables keep the protocol every reader outside Spark (delta-rs, DuckDB's delta extension) reads:
reader version 1, writer version 2, no deletion vectors, no column mapping (`TABLE_PROPERTIES`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.adapters.delta import holds_commit
from lakehouse.contracts import tables, types

log = logging.getLogger(__name__)

# Session defaults for tables Spark creates, and the properties the lake's tables are created with.
TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
    "delta.enableChangeDataFeed": "false",
    # A checkpoint every 100 commits, not 10: writing one holds up the commit that makes it (1.2-2.4 s for a
    # 3-row append, against 0.2 s), and with a commit per table a batch, every third batch paid for one.
    # The price is the readers': delta-rs replays the JSON commits after the checkpoint when it opens a
    # table, ~0.4 ms of CPU each (~35 ms at 90 against ~4 ms at 9).
    "delta.checkpointInterval": "100",
}


def lake_table_properties(name: str) -> dict[str, str]:
    """The Delta properties the lake's table `name` is created with: the lake's common ones and its own."""
    return {**TABLE_PROPERTIES, **tables.table_properties(name)}


def writer_app_id(checkpoint: Path) -> str:
    """A writer's id is tied to its Spark checkpoint: a replay into a new checkpoint starts batch ids
    at 0 again and must not be mistaken for batches already written."""
    return "lakehouse-" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]


def conform(data: DataFrame, columns: types.Columns) -> DataFrame:
    """`data` with exactly the table's columns, in its order and types."""
    return data.select(*(F.col(name).cast(types.spark(kind)).alias(name) for name, kind in columns))


# Delta's optimistic concurrency: another query's commit to the same table (the aggregates' granularities
# share one) can make a commit fail; the append is retried, after looking whether it did commit.
CONFLICTS = ("ConcurrentAppendException", "ProtocolChangedException", "MetadataChangedException",
             "ConcurrentTransactionException", "DELTA_CONCURRENT", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED")
ATTEMPTS = 6
RECENT_COMMITS = 100  # how far back a table's log is searched for a batch already committed


def batch_marker(app_id: str, batch_id: int) -> str:
    return f"{app_id}:{batch_id}"


def committed(table: Path, app_id: str, batch_id: int) -> bool:
    """Whether writer `app_id` has committed batch `batch_id` to the table: its mark in one of the table's
    recent commits, or Delta's own transaction version of a lake written with txnAppId/txnVersion.
    Read from the log alone, with delta-rs (no Spark job, no table state)."""
    return holds_commit(table, app_id, batch_id, batch_marker(app_id, batch_id), RECENT_COMMITS)


class OnceAppender:
    """Appends each micro-batch to a Delta table once, from the executors, for one run of a streaming query.

    Delta's idempotent-write options (txnAppId/txnVersion) would do this, but delta-spark 4.4.0 rebuilds
    the table's whole state with a Spark job to look the version up, on every append (about 0.5 s a table
    here, most of a small batch). Spark's checkpoint already guarantees that a running query calls
    foreachBatch once per batch id; only the first batch after a (re)start can be a replay of one that
    was (partly) committed before a crash. So every commit carries the writer's mark `app:batch` in its
    commitInfo.userMetadata, and only that first batch per table, or an append that failed and is tried
    again, looks in the table's log for it (`committed`). One appender per query start."""

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self._looked: set[Path] = set()

    def append(self, data: DataFrame, table: Path, batch_id: int) -> bool:
        """Append `data` as batch `batch_id`; False when the batch was already in the table."""
        for attempt in range(1, ATTEMPTS + 1):
            if (table not in self._looked or attempt > 1) and committed(table, self.app_id, batch_id):
                log.info("%s: batch %d of %s is already committed; not appended again", table.name, batch_id,
                         self.app_id)
                self._looked.add(table)
                return False
            self._looked.add(table)
            try:
                (data.write.format("delta").mode("append")
                 .option("userMetadata", batch_marker(self.app_id, batch_id))
                 .option("mergeSchema", "true")
                 .save(str(table)))
                return True
            except Exception as exc:  # noqa: BLE001 - py4j's error carries Delta's exception as text
                if attempt == ATTEMPTS or not any(name in str(exc) for name in CONFLICTS):
                    raise
                log.info("%s: batch %d met a concurrent commit (%s); trying again", table.name, batch_id,
                         str(exc).splitlines()[0][:120])
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")
