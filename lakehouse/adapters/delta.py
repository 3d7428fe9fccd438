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


class LakeTable:
    """A Delta table of the lake as the readers see it (delta-rs): its version, live files and schema."""

    def __init__(self, path: Path, version: int | None = None) -> None:
        self.path = path
        self._table = DeltaTable(str(path), version=version)

    @classmethod
    def open(cls, path: Path) -> LakeTable | None:
        """The table at `path`, or None while nobody has written it."""
        return cls(path) if DeltaTable.is_deltatable(str(path)) else None

    def version(self) -> int:
        return int(self._table.version())

    def file_uris(self) -> list[str]:
        return list(self._table.file_uris())

    def files_at(self, version: int) -> list[str]:
        """The live files of an earlier version (what a reader that stopped there had seen)."""
        return list(DeltaTable(self._table.table_uri, version=version).file_uris())

    def arrow_schema(self) -> pa.Schema:
        return self._table.to_pyarrow_dataset().schema

    def count_rows(self) -> int:
        return int(self._table.to_pyarrow_dataset().count_rows())

    def rows_per_file(self) -> dict[str, int]:
        """Rows of each live file, by file name, as the Delta log counts them."""
        actions = pa.table(self._table.get_add_actions(flatten=True))
        return {os.path.basename(p): int(n or 0) for p, n in zip(actions.column("path").to_pylist(),
                                                                 actions.column("num_records").to_pylist(),
                                                                 strict=True)}

    def read(self, columns: list[str]) -> pa.Table:
        return self._table.to_pyarrow_table(columns=columns)


def version_of(path: Path) -> int | None:
    """The table's current version, or None when there is no table."""
    table = LakeTable.open(path)
    return None if table is None else table.version()
