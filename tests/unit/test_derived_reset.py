"""Derived queries whose checkpoints read the Parquet copies start again from silver (streaming/aggregates.py)."""

from __future__ import annotations

from pathlib import Path

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
