"""A warehouse that does not match its lake (the lake deleted or made again, another project's lake, a
warehouse copied from elsewhere) is one line naming both paths and the rebuild, exit 1, nothing written;
for load, status, reconcile, replay and run-all alike. Lakes are made by hand (tests/lake_fakes.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.app.cli import cli
from lakehouse.core.config import Settings
from tests.lake_fakes import append_silver, lake_settings, silver_row
from warehouse.connection import connect
from warehouse.lake import LAKE_ID
from warehouse.loader import load
from warehouse.schema import WarehouseSchema

pytestmark = pytest.mark.unit

REBUILD = "lakehouse replay --into warehouse --from-beginning"
NOWHERE = {"MONGO_URI": "mongodb://127.0.0.1:9/", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # nothing listens


def _loaded(tmp: Path, name: str, changes: int) -> Settings:
    """A lake of `changes` silver commits and the warehouse loaded from it."""
    settings = lake_settings(tmp / name)
    for seq in range(changes):
        append_silver(settings, [silver_row(seq, seq, "insert", "created")])
    load(settings)
    return settings


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mine(tmp_path: Path) -> Settings:
    return _loaded(tmp_path, "mine", 3)


def _refused(settings: Settings, *args: str, code: int = 1) -> str:
    before = _digest(settings.warehouse_path)
    result = CliRunner().invoke(cli, list(args), env={**settings.to_env(), **NOWHERE})
    assert result.exit_code == code, result.output
    assert "does not match the lake" in result.output and REBUILD in result.output, result.output
    assert str(settings.warehouse_path) in result.output and str(settings.lake_path) in result.output
    assert "Traceback" not in result.output
    assert _digest(settings.warehouse_path) == before, "nothing is written"
    return result.output


def test_another_lake_is_refused_by_every_command(mine: Settings, tmp_path: Path) -> None:
    other = _loaded(tmp_path, "other", 5)
    crossed = mine.replace(lake_path=other.lake_path)
    _refused(crossed, "load")
    _refused(crossed, "load", "--every", "1")  # the service exits too: waiting would not set it right
    _refused(crossed, "reconcile")  # before MongoDB is asked (nothing listens at its URI here)
    _refused(crossed, "replay", "--into", "warehouse", "--from-time", "2026-01-01T00:00:00Z")
    _refused(crossed, "run-all")  # before any server starts
    status = CliRunner().invoke(cli, ["status"], env={**crossed.to_env(), **NOWHERE})
    assert "does not match the lake" in status.output, status.output


def test_a_lake_deleted_or_made_again_is_refused(mine: Settings) -> None:
    shutil.rmtree(mine.lake_path)
    _refused(mine, "load")
    append_silver(mine, [silver_row(1, 1, "insert", "created")])  # a new lake at the same path: v0
    _refused(mine, "load")


def test_a_warehouse_ahead_of_its_lake_is_refused_even_without_the_lake_id(mine: Settings, tmp_path: Path) -> None:
    """A warehouse from before the lake's id was recorded: its loaded version is past the lake's newest."""
    con = connect(mine.warehouse_path, schema=WarehouseSchema.of(mine))
    try:
        con.execute("DELETE FROM warehouse_meta WHERE key = ?", [LAKE_ID])
    finally:
        con.close()
    shutil.rmtree(mine.lake_path)
    append_silver(mine, [silver_row(1, 1, "insert", "created")])
    output = _refused(mine, "load")
    assert "loaded up to silver v2, and that lake's silver is at v0" in output


def test_the_rebuild_it_names_sets_it_right(mine: Settings, tmp_path: Path) -> None:
    other = _loaded(tmp_path, "other", 5)
    crossed = mine.replace(lake_path=other.lake_path)
    result = CliRunner().invoke(cli, ["replay", "--into", "warehouse", "--from-beginning"],
                                env={**crossed.to_env(), **NOWHERE})
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["load"], env={**crossed.to_env(), **NOWHERE})
    assert result.exit_code == 0 and "current documents: orders 5" in result.output, result.output


def test_the_matching_lake_loads_on(mine: Settings) -> None:
    append_silver(mine, [silver_row(9, 9, "insert", "created")])
    assert load(mine).new_changes == 1
