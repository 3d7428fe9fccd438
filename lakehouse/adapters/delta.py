"""The lake's Delta tables as every reader outside Spark sees them, through delta-rs (`deltalake`): the
loader, status, reconcile, replay, the notebooks and the tests. The streaming job writes them with
delta-spark (streaming/lake_writer.py) in a protocol delta-rs reads (reader 1, writer 2); only the
empty tables of a new lake are created here, so that every reader finds them from the start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, Schema

log = logging.getLogger(__name__)


def ensure_table(table: Path, schema: pa.Schema, properties: dict[str, str] | None = None) -> bool:
    """Create `table` empty with `schema` (and table `properties`) unless it exists (True when created)."""
    if DeltaTable.is_deltatable(str(table)):
        return False
    table.parent.mkdir(parents=True, exist_ok=True)
    DeltaTable.create(str(table), schema=schema, mode="ignore", configuration=properties)
    return True


def add_missing_columns(table: Path, schema: pa.Schema) -> list[str]:
    """Add to an existing `table` the columns of `schema` it lacks (nullable; rows written before read
    them as null); their names. A metadata commit only: no data file is rewritten, the protocol stays."""
    if not DeltaTable.is_deltatable(str(table)):
        return []
    current = DeltaTable(str(table))
    have = set(current.schema().to_arrow().names)
    missing = [f.with_nullable(True) for f in schema if f.name not in have]
    if missing:
        current.alter.add_columns(list(Schema.from_arrow(pa.schema(missing)).fields))
    return [f.name for f in missing]


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

    def table_id(self) -> str:
        """The id Delta gave the table when it was created: another table at the same path has another."""
        return str(self._table.metadata().id)

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

    def read_where(self, columns: list[str], where: Any) -> pa.Table:
        """The rows that match a pyarrow filter expression; row groups whose statistics rule it out
        (a column all null, say) are not read."""
        return self._table.to_pyarrow_dataset().to_table(columns=columns, filter=where)


def holds_commit(table: Path, app_id: str, batch_id: int, mark: str, recent: int) -> bool:
    """Whether one of the table's `recent` newest commits carries `mark` in its commitInfo.userMetadata,
    or Delta's transaction version of `app_id` (txnAppId/txnVersion) is at least `batch_id`. Reads the
    log alone."""
    if not DeltaTable.is_deltatable(str(table)):
        return False
    log_of = DeltaTable(str(table))
    if (log_of.transaction_version(app_id) or -1) >= batch_id:
        return True
    return any(commit.get("userMetadata") == mark for commit in log_of.history(recent))


def version_of(path: Path) -> int | None:
    """The table's current version, or None when there is no table."""
    table = LakeTable.open(path)
    return None if table is None else table.version()
