"""Idempotent Delta and Parquet writes for foreachBatch, using delta-rs (`deltalake`).

Why delta-rs: delta-spark's jars come only from Maven, which is unreachable here. delta-rs writes real
Delta tables (readable by Delta on any Spark cluster). Its app transactions are recorded but not
enforced, so the check "has (app_id, batch_id) already been committed to this table?" is made here,
before every write; a batch Spark replays after a crash is then skipped, not appended twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

log = logging.getLogger(__name__)


def committed_version(table: Path, app_id: str) -> int | None:
    if not DeltaTable.is_deltatable(str(table)):
        return None
    return DeltaTable(str(table)).transaction_version(app_id)


def append_once(table: Path, data: pa.Table, app_id: str, batch_id: int) -> bool:
    """Append `data` as batch `batch_id` of writer `app_id` unless that batch is already there."""
    done = committed_version(table, app_id)
    if done is not None and done >= batch_id:
        log.info("%s: batch %d already committed by %s, skipping", table.name, batch_id, app_id)
        return False
    table.parent.mkdir(parents=True, exist_ok=True)
    write_deltalake(
        str(table),
        data,
        mode="append",
        schema_mode="merge",
        commit_properties=CommitProperties(app_transactions=[Transaction(app_id=app_id, version=batch_id)]),
    )
    return True


def write_parquet_once(root: Path, data: pa.Table, batch_id: int, partition_by: str) -> None:
    """File names carry the batch id, so a replayed batch overwrites its own files."""
    if data.num_rows == 0:
        return
    pads.write_dataset(
        data,
        str(root),
        format="parquet",
        partitioning=pads.partitioning(pa.schema([data.schema.field(partition_by)]), flavor="hive"),
        basename_template=f"batch-{batch_id:010d}-{{i}}.parquet",
        existing_data_behavior="overwrite_or_ignore",
    )
