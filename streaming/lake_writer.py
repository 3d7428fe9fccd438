"""Idempotent Delta and Parquet writes of a micro-batch, from the executors (delta-spark).

Each table's batch is appended with Delta's idempotent-write options `txnAppId`/`txnVersion`: a batch Spark
replays after a crash carries the version already committed under the writer's id, and Delta skips it.
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

from lakehouse.contracts import types

log = logging.getLogger(__name__)

# Session defaults for tables Spark creates, and the properties the lake's tables are created with.
TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
    "delta.enableChangeDataFeed": "false",
}


def writer_app_id(checkpoint: Path) -> str:
    """A writer's id is tied to its Spark checkpoint: a replay into a new checkpoint starts batch ids
    at 0 again and must not be mistaken for batches already written."""
    return "lakehouse-" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]


def conform(data: DataFrame, columns: types.Columns) -> DataFrame:
    """`data` with exactly the table's columns, in its order and types."""
    return data.select(*(F.col(name).cast(types.spark(kind)).alias(name) for name, kind in columns))


# Delta's optimistic concurrency: another query's commit to the same table (the aggregates' granularities
# share one) can make a commit fail; the append is retried, which the txn options make safe.
CONFLICTS = ("ConcurrentAppendException", "ProtocolChangedException", "MetadataChangedException",
             "ConcurrentTransactionException", "DELTA_CONCURRENT", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED")
ATTEMPTS = 6


def append_once(data: DataFrame, table: Path, app_id: str, batch_id: int) -> None:
    """Append `data` to the Delta table as batch `batch_id` of writer `app_id`; Delta skips a batch that
    writer has already committed there."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            (data.write.format("delta").mode("append")
             .option("txnAppId", app_id).option("txnVersion", batch_id)
             .option("mergeSchema", "true")
             .save(str(table)))
            return
        except Exception as exc:  # noqa: BLE001 - py4j's error carries Delta's exception as text
            if attempt == ATTEMPTS or not any(name in str(exc) for name in CONFLICTS):
                raise
            log.info("%s: batch %d met a concurrent commit (%s); trying again", table.name, batch_id,
                     str(exc).splitlines()[0][:120])
            time.sleep(0.2 * attempt)


def write_parquet_copy(data: DataFrame, root: Path, app_id: str, batch_id: int, partition_by: str) -> None:
    """The batch's rows as Parquet in a folder of their own per writer and batch,
    root/lake_batch=<writer>-<batch>/<partition_by>=<value>/, overwritten as a whole: a replayed batch
    replaces its own files and nothing else, and the cost does not grow with the folders already there
    (readers see `lake_batch` and `partition_by` as partition columns)."""
    data.write.mode("overwrite").partitionBy(partition_by).parquet(str(root / f"lake_batch={app_id}-{batch_id:010d}"))
