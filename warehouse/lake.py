"""The warehouse's source: the lake's silver Delta table, read by file (the files added since a version)
and checked to be the lake the warehouse was loaded from."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from lakehouse.adapters.delta import LakeTable
from lakehouse.contracts import events, tables, types
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.config import Settings, for_stage
from lakehouse.core.progress import Progress
from warehouse.connection import connect
from warehouse.errors import LakeMismatch, LakeMissing, WarehouseError
from warehouse.migrate import present_tables, stored_meta
from warehouse.schema import empty_select

SOURCE = tables.SILVER

# change-table column -> the silver column it is loaded from (the rest have the same name, or are set on load)
FROM_SILVER = {"document": "full_document"}

# Silver columns every load needs (collection columns missing from an older lake are read as nulls).
SILVER_COLUMNS_NEEDED = (*(FROM_SILVER.get(c, c) for c, _ in tables.CHANGE_COLUMNS), "key", "kafka_topic",
                         "kafka_partition", "kafka_offset", "schema_version")
# A silver column of an older envelope -> the column it became: a lake written before has the old one
# (and, once the streaming job of this release appended to it, both), and is read as the new one.
RENAMED_SILVER = events.RENAMED_FIELDS


def sources_of(spec: CollectionSpec) -> dict[str, str]:
    """A collection's change-table column -> the silver column it is loaded from, where the names differ."""
    return {**FROM_SILVER, **({spec.key_column: "key"} if spec.key_column else {})}


def silver_table(settings: Settings) -> LakeTable | None:
    """The lake's silver table; None while the streaming job has not written it yet."""
    settings = for_stage(settings, "warehouse")
    if not settings.lake_path.exists():
        raise LakeMissing(
            f"no lake at {settings.lake_path} (LAKE_PATH). Start the streaming job (`lakehouse stream`, or "
            "`make run-all`) to create it, or point LAKE_PATH/--lake-path at an existing lake"
        )
    path = settings.table_path(SOURCE)
    table = LakeTable.open(path)
    if table is None:
        return None
    have = set(table.arrow_schema().names)
    have |= {new for old, new in RENAMED_SILVER.items() if old in have}
    missing = [c for c in SILVER_COLUMNS_NEEDED if c not in have and c not in tables.OPTIONAL_SILVER]
    if missing:
        raise WarehouseError(
            f"the silver table {path} lacks column(s) {', '.join(missing)} that the warehouse loads: it was "
            "written by another version of the streaming job. Reprocess Kafka into a new lake with "
            "`lakehouse --lake-path NEW_FOLDER replay --into lake --from-beginning` and load from there"
        )
    return table


def new_files(silver: LakeTable, since_version: int | None) -> list[str]:
    current = set(silver.file_uris())
    if since_version is None:
        return sorted(current)
    before = set(silver.files_at(since_version))
    return sorted(current - before)


def read_silver(silver: LakeTable, collections: tuple[CollectionSpec, ...], files: list[str] | None = None,
                where: pads.Expression | None = None, what: str = "read silver") -> pa.Table:
    """The collections' changes from silver (all live files, or the given ones), optionally filtered
    (pushed down to the Parquet scan), with every column their tables load (nulls for a column an older
    lake lacks); progress is in rows of the files read, as the Delta log counts them."""
    files = files if files is not None else silver.file_uris()
    schema = silver.arrow_schema()
    dataset = pads.dataset(files, schema=schema, format="parquet")
    rows_in = silver.rows_per_file()
    wanted: dict[str, str] = dict.fromkeys((*SILVER_COLUMNS_NEEDED, *RENAMED_SILVER), "")
    for spec in collections:
        wanted.update(dict.fromkeys(name for name, _ in spec.columns))
    condition = pads.field("collection").isin([spec.name for spec in collections])
    scanner = dataset.scanner(columns=[c for c in wanted if c in schema.names],
                              filter=condition if where is None else condition & where)
    batches, seen = [], set()
    total = sum(int(rows_in.get(os.path.basename(f)) or 0) for f in files)
    with Progress(what, total=total, unit="rows") as progress:
        for tagged in scanner.scan_batches():
            batches.append(tagged.record_batch)
            name = os.path.basename(tagged.fragment.path)
            if name not in seen:
                seen.add(name)
                progress.advance(int(rows_in.get(name) or 0))
    table = _renamed_columns(pa.Table.from_batches(batches, schema=scanner.projected_schema))
    refuse_development_events(table)  # once per read, before any of it is applied
    for name in sorted(tables.OPTIONAL_SILVER - set(table.column_names)):
        table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    for spec in collections:
        for name, kind in spec.columns:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, types.arrow(kind)))
    return table


def _renamed_columns(table: pa.Table) -> pa.Table:
    """An older envelope's columns as this release names them: the new column where a row has it, the old
    one's value where it has not (rows written before the rename)."""
    for old, new in RENAMED_SILVER.items():
        if old not in table.column_names:
            continue
        merged = table[old] if new not in table.column_names else pc.coalesce(table[new], table[old])
        table = table.drop_columns([c for c in (old, new) if c in table.column_names]).append_column(new, merged)
    return table


LAKE_ID = "lake_silver_table_id"  # warehouse_meta: the silver table (its Delta id) the warehouse was loaded from


def check_lake(con: duckdb.DuckDBPyConnection, settings: Settings, silver: LakeTable | None) -> None:
    """Refuse a warehouse loaded from another lake than settings.lake_path: the lake deleted or replaced,
    another project's lake, or a warehouse copied from elsewhere. Reading on would load nothing, or the
    wrong versions, or fail deep in delta-rs."""
    if "load_state" not in present_tables(con):
        return
    loaded = [v for (v,) in con.execute("SELECT delta_version FROM load_state").fetchall() if v is not None]
    if not loaded:
        return
    recorded = (stored_meta(con) or {}).get(LAKE_ID)
    newest = max(loaded)
    where = f"the warehouse {settings.warehouse_path} does not match the lake {settings.lake_path}"
    fix = ("rebuild the warehouse from this lake with `lakehouse replay --into warehouse --from-beginning`, or "
           "point WAREHOUSE_PATH and LAKE_PATH at a warehouse and the lake it was loaded from")
    if silver is None:
        raise LakeMismatch(f"{where}: it was loaded up to silver v{newest}, and that lake has no silver table; {fix}")
    if recorded is not None and recorded != silver.table_id():
        raise LakeMismatch(f"{where}: it was loaded from silver table {recorded}, and that lake's silver table is "
                           f"{silver.table_id()} (another lake, or one made again); {fix}")
    if newest > silver.version():
        raise LakeMismatch(f"{where}: it was loaded up to silver v{newest}, and that lake's silver is at "
                           f"v{silver.version()}; {fix}")


def require_matching_lake(settings: Settings) -> None:
    """check_lake for readers (reconcile, replay, run-all): one short read-only look."""
    settings = for_stage(settings, "warehouse")
    try:
        silver = silver_table(settings)
    except LakeMissing:
        silver = None  # a loaded warehouse whose lake is gone says so; a new one waits for the lake
    # Only the bookkeeping tables are read: a warehouse the next load will upgrade passes too.
    con = connect(settings.warehouse_path, read_only=True, bookkeeping_only=True)
    try:
        check_lake(con, settings, silver)
    finally:
        con.close()


def silver_version(settings: Settings) -> int | None:
    """The lake's silver version now (None: no lake or table yet), without opening the warehouse: a
    loader that polls often opens DuckDB only when there is something new."""
    settings = for_stage(settings, "warehouse")
    if not settings.lake_path.exists():
        return None
    table = LakeTable.open(settings.table_path(SOURCE))
    return None if table is None else table.version()


def refuse_development_events(rows: pa.Table) -> None:
    """This release reads envelopes v2 and v3 (lakehouse/contracts/formats.py); a lake holding v1 events (a
    development build's, whose doc_id was the _id as text, where 1001 and "1001" collided) is made again,
    not upgraded."""
    if rows.num_rows == 0 or "schema_version" not in rows.column_names:
        return
    older = pc.less(rows["schema_version"], events.OLDEST_READ_VERSION)
    old = pc.sum(pc.cast(pc.fill_null(older, False), pa.int64()))
    if old.as_py():
        raise LakeMismatch(
            f"the lake's silver holds {old.as_py()} change events of envelope v1, from a development build before "
            f"release 1 (this release reads v{events.OLDEST_READ_VERSION} to v{events.SCHEMA_VERSION}); make the "
            "lake again: move LAKE_PATH, STATE_DIR/spark and the warehouse away, then run `lakehouse replay --into "
            "kafka --from-beginning` and the streaming job (or `make run-all`)")


def lake_select(path: Path, columns: types.Columns) -> str:
    """A lake table's live Parquet files, as the Delta log lists them now."""
    table = LakeTable.open(path)
    if table is None:
        return empty_select(columns)
    files = table.file_uris()
    if not files:
        return empty_select(columns)
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"SELECT * FROM read_parquet([{quoted}], union_by_name = true)"
