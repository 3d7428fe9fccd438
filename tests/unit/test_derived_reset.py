"""Derived queries whose checkpoints read the Parquet copies start again from silver (streaming/aggregates.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from streaming.aggregates import reset_derived_if_old

pytestmark = pytest.mark.unit


def _checkpoint(path: Path, source_line: str) -> Path:
    (path / "offsets").mkdir(parents=True)
    (path / "offsets" / "0").write_text(f"v1\n{{}}\n{source_line}")
    return path


def test_parquet_source_checkpoints_are_rebuilt_with_their_tables_and_delta_ones_kept(tmp_path: Path) -> None:
    settings = Settings.from_env(lake_path=tmp_path / "lake", state_dir=tmp_path / "state")
    for name in (tables.AGGREGATES, tables.SILVER):
        (settings.table_path(name) / "_delta_log").mkdir(parents=True)
    new = [_checkpoint(tmp_path / "a", '{"sourceVersion":1,"reservoirId":"x","reservoirVersion":3,"index":-1}')]
    assert not reset_derived_if_old(settings, new)
    assert new[0].exists() and settings.table_path(tables.AGGREGATES).exists()
    old = [*new, _checkpoint(tmp_path / "b", '{"logOffset":4}')]
    assert reset_derived_if_old(settings, old)
    assert not any(c.exists() for c in old)
    assert not settings.table_path(tables.AGGREGATES).exists() and settings.table_path(tables.SILVER).exists()


def test_a_release_1_revenue_by_category_is_rebuilt_from_silver(tmp_path: Path) -> None:
    """Release 1 counted orders in a column `orders`; release 2's `order_count` cannot append to it."""
    import pyarrow as pa
    from deltalake import write_deltalake

    settings = Settings.from_env(lake_path=tmp_path / "lake", state_dir=tmp_path / "state")
    schema = tables.lake_schemas(())[tables.REVENUE_BY_CATEGORY]
    current = settings.table_path(tables.REVENUE_BY_CATEGORY)
    write_deltalake(str(current), schema.empty_table())
    checkpoints = [_checkpoint(tmp_path / "c", '{"sourceVersion":1,"reservoirId":"x","reservoirVersion":3}')]
    assert not reset_derived_if_old(settings, checkpoints) and current.exists()
    release_1 = pa.schema([pa.field("orders", pa.int64()) if f.name == "order_count" else f for f in schema])
    write_deltalake(str(current), release_1.empty_table(), mode="overwrite", schema_mode="overwrite")
    assert reset_derived_if_old(settings, checkpoints)
    assert not current.exists() and not checkpoints[0].exists()


def test_a_release_1_silver_gets_this_releases_columns_before_any_query_starts(tmp_path: Path) -> None:
    """The derived queries read silver as a stream, and fail when its schema changes under them (as the
    first batch's schema merge would add `key`): the job adds the columns at its start instead."""
    from deltalake import DeltaTable, write_deltalake

    from streaming.job import ensure_lake_tables

    settings = Settings.from_env(lake_path=tmp_path / "lake", state_dir=tmp_path / "state")
    schema = tables.silver_schema(settings)
    release_1 = schema.remove(schema.get_field_index("key")).append(pa.field("order_id", pa.string()))
    silver = settings.table_path(tables.SILVER)
    write_deltalake(str(silver), release_1.empty_table())
    ensure_lake_tables(settings)
    names = DeltaTable(str(silver)).schema().to_arrow().names
    assert "key" in names and "order_id" in names  # rows written before keep theirs; the loader reads both
    version = DeltaTable(str(silver)).version()
    ensure_lake_tables(settings)
    assert DeltaTable(str(silver)).version() == version  # nothing to add the second time
