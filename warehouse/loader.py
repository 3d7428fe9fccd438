"""Silver Delta table -> DuckDB, incrementally, deduplicated by change_id, applied in source order.

Each captured collection (collections.toml) has its own table of changes and current-state table.
Each load reads only the Delta files added since the version each collection was loaded up to, and
runs in one DuckDB transaction: a crash mid-load leaves the previous state. A document's current row
is rewritten only when its newest change in source order is among the new ones, so a late or repeated
change never overwrites a newer one, a load costs what it brings (not what the warehouse holds), and
loading the same data twice changes nothing.
Replays (warehouse/replace.py) use the same apply with a range: the changes in it are deleted and
loaded again from the lake. A collection new to the spec is loaded from the whole lake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from lakehouse.core.collections import CollectionSpec
from lakehouse.core.config import Settings, for_stage
from lakehouse.core.files import write_text_atomically
from warehouse import metrics
from warehouse.apply import apply_collection, count, in_transaction
from warehouse.connection import connect
from warehouse.errors import LakeMissing, OtherSchemaVersion, WarehouseLocked
from warehouse.lake import (
    LAKE_ID,
    SOURCE,
    check_lake,
    lake_select,
    new_files,
    read_silver,
    require_matching_lake,
    silver_table,
)
from warehouse.schema import LAKE_VIEWS, WarehouseSchema, load_source

log = logging.getLogger(__name__)


def current_documents(current: dict[str, int]) -> str:
    """Documents in each collection's current state, as the load and replay lines print them."""
    return ", ".join(f"{name} {count}" for name, count in current.items())


@dataclass(frozen=True)
class LoadResult:
    delta_version: int | None
    rows_read: int
    new_changes: int
    current: dict[str, int] = field(default_factory=dict)  # collection -> documents in its current state


def loaded_versions(con: duckdb.DuckDBPyConnection, schema: WarehouseSchema) -> dict[str, int | None]:
    """Per collection, the silver version its tables are loaded up to (None: never loaded)."""
    rows = dict(con.execute("SELECT source, delta_version FROM load_state").fetchall())
    return {spec.name: rows.get(load_source(spec)) for spec in schema.collections}


def current_counts(con: duckdb.DuckDBPyConnection, schema: WarehouseSchema) -> dict[str, int]:
    return {spec.name: count(con, spec.table) for spec in schema.collections}


def load(settings: Settings) -> LoadResult:
    settings = for_stage(settings, "warehouse")
    try:
        silver = silver_table(settings)
    except LakeMissing:
        if settings.warehouse_path.exists():
            require_matching_lake(settings)
        raise
    schema = WarehouseSchema.of(settings)
    con = connect(settings.warehouse_path, schema=schema)
    try:
        check_lake(con, settings, silver)
        if silver is None:
            log.info("no silver table at %s yet; nothing to load", settings.table_path(SOURCE))
            return LoadResult(None, 0, 0, current_counts(con, schema))
        version = silver.version()
        loaded = loaded_versions(con, schema)
        behind: dict[int | None, list[CollectionSpec]] = {}
        for spec in schema.collections:
            if loaded[spec.name] != version:
                behind.setdefault(loaded[spec.name], []).append(spec)
        if not behind:
            metrics.LOADER_VERSION.set(version)
            return LoadResult(version, 0, 0, current_counts(con, schema))
        started, rows_read, new_changes, began_us = time.monotonic(), 0, 0, 0
        added_to: dict[str, int] = {}
        newest: list[int] = []

        def apply_all() -> None:
            nonlocal rows_read, new_changes, began_us
            # now() in a transaction is its start, the loaded_at of every change it inserts.
            began_us = int(con.execute("SELECT epoch_us(now())").fetchall()[0][0])
            for since, specs in behind.items():
                incoming = read_silver(silver, tuple(specs), new_files(silver, since),
                                       what=f"load: read silver v{version}")
                rows_read += incoming.num_rows
                if incoming.num_rows:
                    newest.append(pc.max(incoming["cluster_time_s"]).as_py())
                for spec in specs:
                    mine = incoming.filter(pc.equal(incoming["collection"], spec.name))
                    added = apply_collection(con, spec, mine)
                    new_changes += added
                    added_to[spec.name] = added
                    con.execute(
                        "INSERT INTO load_state VALUES (?, ?, ?, now()) ON CONFLICT (source) DO UPDATE SET "
                        "delta_version = excluded.delta_version, "
                        "rows_loaded = load_state.rows_loaded + excluded.rows_loaded, loaded_at = excluded.loaded_at",
                        [load_source(spec), version, added],
                    )
            con.execute("INSERT INTO warehouse_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "value = excluded.value", [LAKE_ID, silver.table_id()])
            refresh_lake_views(con, settings)

        in_transaction(con, apply_all, "loading silver")
        metrics.LOADER_LOAD_SECONDS.observe(time.monotonic() - started)
        metrics.LOADER_ROWS_READ.inc(rows_read)
        metrics.LOADER_VERSION.set(version)
        for name, added in added_to.items():
            metrics.LOADER_CHANGES.labels(name).inc(added)
        if newest:
            metrics.LOADER_NEWEST_CHANGE.set(max(newest))
        _record_load(settings.load_metrics, {"silver_version": version, "rows_read": rows_read,
                                             "new_changes": new_changes, "began_us": began_us,
                                             "committed_us": time.time_ns() // 1000,
                                             "seconds": round(time.monotonic() - started, 3)})
        log.info("loaded silver v%s: %d rows read, %d new changes, applied in %.1fs", version, rows_read,
                 new_changes, time.monotonic() - started)
        return LoadResult(version, rows_read, new_changes, current_counts(con, schema))
    finally:
        con.close()

LOAD_METRICS_KEPT = 10_000  # lines of the load log kept (the newest); older ones are dropped when it doubles


def _record_load(path: Path, record: dict[str, object]) -> None:
    """One line per load (for freshness and status); the file is cut back to its newest lines when it
    has grown to twice what is kept, so a long-running loader does not fill the disk."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if path.stat().st_size > LOAD_METRICS_KEPT * 2 * 200:
            lines = path.read_text().splitlines()
            if len(lines) > 2 * LOAD_METRICS_KEPT:
                write_text_atomically(path, "\n".join(lines[-LOAD_METRICS_KEPT:]) + "\n")
    except OSError as exc:  # the load itself is committed: a metrics line is not worth failing it
        log.warning("could not record the load in %s: %s", path, exc)


def load_if_possible(settings: Settings) -> LoadResult | None:
    """A load for callers that run beside the streaming job and the readers (run-all, the loader's
    reconcile rounds): None when the lake is not there yet or another process holds the warehouse."""
    settings = for_stage(settings, "warehouse")
    try:
        return load(settings)
    except (LakeMissing, WarehouseLocked):
        return None


def refresh_lake_views(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Point each view of a lake table (the aggregates, the quality checks) at its live files now."""
    for view, (table, columns) in LAKE_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {view} AS {lake_select(settings.table_path(table), columns)}")


def rebuild(settings: Settings) -> LoadResult:
    """The warehouse from the whole lake, built in a new file that replaces the old one only once
    complete; a file that is not this pipeline's warehouse is never replaced."""
    settings = for_stage(settings, "warehouse")
    target = settings.warehouse_path
    if target.exists():
        with contextlib.suppress(OtherSchemaVersion):
            connect(target, schema=WarehouseSchema.of(settings)).close()
    scratch = target.with_name(f".{target.name}.rebuild-{os.getpid()}")
    for leftover in (scratch, scratch.with_name(scratch.name + ".wal")):
        leftover.unlink(missing_ok=True)
    try:
        result = load(settings.replace(warehouse_path=scratch))
        os.replace(scratch, target)
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
    finally:
        for leftover in (scratch, scratch.with_name(scratch.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return result
