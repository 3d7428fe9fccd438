"""Idempotent Delta and Parquet writes for foreachBatch, using delta-rs (`deltalake`).

Why delta-rs: delta-spark's jars come only from Maven, which is unreachable here. delta-rs writes real
Delta tables (readable by Delta on any Spark cluster). Its app transactions are recorded but not
enforced, so the check "has (app_id, batch_id) already been committed to this table?" is made here,
before every write; a batch Spark replays after a crash is then skipped, not appended twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

log = logging.getLogger(__name__)


def writer_app_id(checkpoint: Path) -> str:
    """A writer's id is tied to its Spark checkpoint: a replay into a new checkpoint starts batch ids
    at 0 again and must not be mistaken for batches already written."""
    return "lakehouse-" + hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]


def ensure_table(table: Path, schema: pa.Schema) -> bool:
    """Create `table` empty with `schema` unless it exists (True when created)."""
    if DeltaTable.is_deltatable(str(table)):
        return False
    table.parent.mkdir(parents=True, exist_ok=True)
    DeltaTable.create(str(table), schema=schema, mode="ignore")
    return True


def conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """`data` with exactly the table's columns, in its order and types."""
    return data.select(schema.names).cast(schema)


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


def write_parquet_once(root: Path, data: pa.Table, app_id: str, batch_id: int, partition_by: str) -> None:
    """One file per partition value and batch, named by writer and batch id: a replayed batch
    overwrites its own files, and a replay into a new checkpoint never touches the job's. Written
    under a hidden temporary name and renamed, so a reader (Spark's file stream source) never sees
    half a file."""
    if data.num_rows == 0:
        return
    for value in pc.unique(data[partition_by]).to_pylist():
        part = data.filter(pc.equal(data[partition_by], pa.scalar(value, data.schema.field(partition_by).type)))
        folder = root / f"{partition_by}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{app_id}-batch-{batch_id:010d}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(part.drop_columns([partition_by]), tmp)
        os.replace(tmp, folder / name)
