"""Silver Delta table -> DuckDB, incrementally, deduplicated by change_id, applied in source order.

Each load reads only the Delta files added since the version it loaded last, and runs in one DuckDB
transaction: a crash mid-load leaves the previous state. `orders` is re-derived for every touched
document from all its changes by source order, so a late or repeated change never overwrites a
newer one, and loading the same data twice changes nothing. Replays (warehouse/replay.py) use the
same apply with a predicate: the changes it matches are deleted and loaded again from the lake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable

from lakehouse import events, tables
from lakehouse.config import Settings
from lakehouse.progress import Progress
from warehouse.schema import (
    AGGREGATES_EMPTY,
    AGGREGATES_VIEW,
    DDL,
    FACT_COLUMNS,
    ORDERS_COLUMNS,
    SCHEMA_VERSION,
    SOURCE_ORDER,
    TABLES,
    view_ddl,
)

log = logging.getLogger(__name__)

SOURCE = tables.SILVER
REBUILD = "lakehouse replay --into warehouse --from-beginning"
# fact column -> the silver column it is loaded from (the rest have the same name, or are set on load)
_FROM_SILVER = {"document": "full_document"}
SILVER_COLUMNS_NEEDED = (*(_FROM_SILVER.get(c, c) for c, _ in FACT_COLUMNS if c != "loaded_at"), "schema_version",
                         "document_key")


@dataclass(frozen=True)
class LoadResult:
    delta_version: int | None
    rows_read: int
    new_changes: int
    orders: int


class WarehouseError(RuntimeError):
    """Bad input the operator has to act on; the message names the file and the next step."""


class LakeMissing(WarehouseError):
    pass


class OtherSchemaVersion(WarehouseError):
    """The file is this pipeline's warehouse, of another schema version: what a rebuild replaces."""


class WarehouseLocked(WarehouseError):
    """Another process holds the file (DuckDB: one writer, or several readers, at a time)."""


LOCK_WAIT_S = 60.0  # how long a one-off command waits for another process to let go of the file


def connect(path: Path, read_only: bool = False, wait: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, creating it when the file is new or empty; refuse a file that is not a
    warehouse of this schema version rather than write into it. While another process holds the file
    (a reader holds it against the writer and the writer against readers) wait up to `wait` seconds
    with backoff, then raise WarehouseLocked."""
    if read_only:
        require_warehouse(path)
    deadline, pause, said = time.monotonic() + wait, 0.05, False
    while True:
        try:
            if read_only:
                con = duckdb.connect(str(path), read_only=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                con = duckdb.connect(str(path))
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise _unopenable(path, exc) from exc
            holder = re.search(r"held in (.*?)(?:\. However|$)", str(exc))
            if time.monotonic() + pause > deadline:
                raise WarehouseLocked(
                    f"the warehouse {path} is still held by another process "
                    f"({holder.group(1) if holder else 'unknown'}) after {wait:.0f}s; readers (status, reconcile, "
                    "notebooks) let go within seconds, so look for a long-running one, or stop the loader"
                ) from exc
            if not said:
                log.info("warehouse %s is held by another process (%s); waiting for it", path,
                         holder.group(1) if holder else "unknown")
                said = True
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        except duckdb.Error as exc:
            raise _unopenable(path, exc) from exc
    try:
        _check_or_create(con, path, read_only)
    except BaseException:
        con.close()
        raise
    return con


def require_warehouse(path: Path) -> None:
    """A command that only reads says at once when there is nothing to read (and creates nothing)."""
    if not path.exists():
        raise WarehouseError(f"no warehouse at {path} (WAREHOUSE_PATH) yet: run `make run-all` or `lakehouse load` "
                             "first, or point WAREHOUSE_PATH at an existing one")


def _unopenable(path: Path, exc: BaseException) -> WarehouseError:
    return WarehouseError(
        f"cannot open the warehouse {path}: {exc}. If it is not a DuckDB file of this pipeline, move it away "
        f"and run `{REBUILD}`"
    )


def _check_or_create(con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
    present = {
        name: {col for (col,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
            [name]).fetchall()}
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
        ).fetchall()
    }
    if present and "warehouse_meta" not in present:
        raise WarehouseError(
            f"{path} is a DuckDB database but not this pipeline's warehouse (it has tables "
            f"{', '.join(sorted(present))} and no warehouse_meta). Point WAREHOUSE_PATH/--warehouse-path at "
            f"another file, or move this one away and run `{REBUILD}`"
        )
    if present:
        found = con.execute("SELECT value FROM warehouse_meta WHERE key = 'schema_version'").fetchall()
        version = found[0][0] if found else "?"
        if version != str(SCHEMA_VERSION):
            raise OtherSchemaVersion(
                f"{path} holds warehouse schema v{version}; this code needs v{SCHEMA_VERSION}. Rebuild it from the "
                f"lake with `{REBUILD}` (the file is replaced only once the rebuild is complete)"
            )
        for name, columns in TABLES.items():
            missing = [c for c, _ in columns if c not in present.get(name, set())]
            if missing:
                raise WarehouseError(
                    f"{path}: table {name} lacks column(s) {', '.join(missing)} of schema v{SCHEMA_VERSION}; "
                    f"the file was changed by hand or by another program. Rebuild it with `{REBUILD}`"
                )
    if read_only:
        if not present:
            raise WarehouseError(f"{path} is not a warehouse yet: run `lakehouse load` first")
        return
    con.execute("BEGIN TRANSACTION")
    for statement in DDL:
        con.execute(statement)
    con.execute("INSERT INTO warehouse_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                [str(SCHEMA_VERSION)])
    for statement in view_ddl():
        con.execute(statement)
    if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ?", [AGGREGATES_VIEW]).fetchall():
        con.execute(f"CREATE VIEW {AGGREGATES_VIEW} AS {AGGREGATES_EMPTY}")
    con.execute("COMMIT")


def silver_table(settings: Settings) -> DeltaTable | None:
    """The lake's silver table; None while the streaming job has not written it yet."""
    if not settings.lake_path.exists():
        raise LakeMissing(
            f"no lake at {settings.lake_path} (LAKE_PATH). Start the streaming job (`lakehouse stream`, or "
            "`make run-all`) to create it, or point LAKE_PATH/--lake-path at an existing lake"
        )
    path = settings.table_path(SOURCE)
    if not DeltaTable.is_deltatable(str(path)):
        return None
    table = DeltaTable(str(path))
    have = set(table.to_pyarrow_dataset().schema.names)
    missing = [c for c in SILVER_COLUMNS_NEEDED if c not in have]
    if missing:
        raise WarehouseError(
            f"the silver table {path} lacks column(s) {', '.join(missing)} that the warehouse loads: it was "
            "written by another version of the streaming job. Reprocess Kafka into a new lake with "
            "`lakehouse --lake-path NEW_FOLDER replay --into lake --from-beginning` and load from there"
        )
    return table


def _new_files(silver: DeltaTable, since_version: int | None) -> list[str]:
    current = set(silver.file_uris())
    if since_version is None:
        return sorted(current)
    before = set(DeltaTable(silver.table_uri, version=since_version).file_uris())
    return sorted(current - before)


def read_silver(silver: DeltaTable, files: list[str] | None = None, where: pads.Expression | None = None,
                what: str = "read silver") -> pa.Table:
    """Order changes from silver (all live files, or the given ones), optionally filtered (pushed down
    to the Parquet scan); progress is in rows of the files read, as the Delta log counts them."""
    files = files if files is not None else silver.file_uris()
    dataset = pads.dataset(files, schema=silver.to_pyarrow_dataset().schema, format="parquet")
    actions = pa.table(silver.get_add_actions(flatten=True))
    rows_in = dict(zip((os.path.basename(p) for p in actions.column("path").to_pylist()),
                       actions.column("num_records").to_pylist(), strict=True))
    condition = pads.field("collection") == "orders"
    scanner = dataset.scanner(columns=list(SILVER_COLUMNS_NEEDED),
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
    return pa.Table.from_batches(batches, schema=scanner.projected_schema)


def load(settings: Settings) -> LoadResult:
    silver = silver_table(settings)
    con = connect(settings.warehouse_path)
    try:
        if silver is None:
            log.info("no silver table at %s yet; nothing to load", settings.table_path(SOURCE))
            return LoadResult(None, 0, 0, count(con, "orders"))
        version = silver.version()
        rows = con.execute("SELECT delta_version FROM load_state WHERE source = ?", [SOURCE]).fetchall()
        loaded_version = rows[0][0] if rows else None
        if loaded_version == version:
            return LoadResult(version, 0, 0, count(con, "orders"))
        incoming = read_silver(silver, _new_files(silver, loaded_version), what=f"load: read silver v{version}")
        started = time.monotonic()
        new_changes = apply(con, incoming, version, aggregates=settings.table_path(tables.AGGREGATES))
        log.info("loaded silver v%s: %d rows read, %d new changes, applied in %.1fs", version, incoming.num_rows,
                 new_changes, time.monotonic() - started)
        return LoadResult(version, incoming.num_rows, new_changes, count(con, "orders"))
    finally:
        con.close()


def load_if_possible(settings: Settings) -> LoadResult | None:
    """A load for callers that run beside the streaming job and the readers (run-all, the loader's
    reconcile rounds): None when the lake is not there yet or another process holds the warehouse."""
    try:
        return load(settings)
    except (LakeMissing, WarehouseLocked):
        return None


def apply(con: duckdb.DuckDBPyConnection, incoming: pa.Table, version: int | None,
          replace: str | None = None, aggregates: Path | None = None) -> int:
    """Insert new changes and re-derive `orders` for the documents they touch, in one transaction.
    `replace` (SQL over fact_order_changes) first deletes the changes it matches, for replays;
    `version` (None for replays) becomes the load's high-water mark. Returns changes inserted."""
    fact_cols = [c for c, _ in FACT_COLUMNS]
    select_incoming = ", ".join(
        "now() AS loaded_at" if c == "loaded_at" else f"{_FROM_SILVER[c]} AS {c}" if c in _FROM_SILVER else c
        for c in fact_cols
    )
    order_by = ", ".join(f"{c} DESC" for c in SOURCE_ORDER)
    orders_cols = [c for c, _ in ORDERS_COLUMNS]
    orders_select = ", ".join(
        {"last_change_id": "change_id AS last_change_id",
         "updated_at": "event_time AS updated_at"}.get(c, c)
        for c in orders_cols
    )
    con.register("incoming_arrow", with_v2_identity(incoming))
    con.execute("BEGIN TRANSACTION")
    try:
        everything = bool(con.execute(
            "SELECT count(*) FROM incoming_arrow WHERE op = 'snapshot_end'").fetchall()[0][0])
        con.execute("CREATE OR REPLACE TEMP TABLE touched (doc_id VARCHAR)")
        if replace:
            everything |= bool(con.execute(
                f"SELECT count(*) FROM fact_order_changes WHERE op = 'snapshot_end' AND ({replace})").fetchall()[0][0])
            con.execute(f"INSERT INTO touched SELECT DISTINCT doc_id FROM fact_order_changes WHERE {replace}")
            con.execute(f"DELETE FROM fact_order_changes WHERE {replace}")
        before = count(con, "fact_order_changes")
        con.execute(
            f"INSERT INTO fact_order_changes ({', '.join(fact_cols)}) "
            f"SELECT {select_incoming} FROM incoming_arrow "
            "QUALIFY row_number() OVER (PARTITION BY change_id ORDER BY kafka_offset) = 1 "
            "ON CONFLICT DO NOTHING"
        )
        new_changes = count(con, "fact_order_changes") - before
        # A complete snapshot (snapshot_end) is news for every document; other changes for their own.
        if everything:
            con.execute("INSERT INTO touched SELECT doc_id FROM fact_order_changes UNION SELECT doc_id FROM orders")
        else:
            con.execute("INSERT INTO touched SELECT DISTINCT doc_id FROM incoming_arrow")
        con.execute("DELETE FROM touched WHERE doc_id = '*'")
        con.execute("DELETE FROM orders WHERE doc_id IN (SELECT doc_id FROM touched)")
        cut_s, cut_inc = con.execute(
            "SELECT cluster_time_s, cluster_time_inc FROM fact_order_changes WHERE op = 'snapshot_end' "
            "UNION ALL SELECT 0, 0 ORDER BY 1 DESC, 2 DESC LIMIT 1").fetchall()[0]
        # An update whose document was deleted before lookup carries no state: it cannot be the
        # current version, and the delete that follows it will arrive. A document whose latest change
        # is older than the newest complete snapshot was deleted while history was unavailable.
        con.execute(
            f"INSERT INTO orders ({', '.join(orders_cols)}) SELECT {orders_select} FROM ("
            "  SELECT * FROM fact_order_changes"
            "  WHERE doc_id IN (SELECT DISTINCT doc_id FROM touched) AND op <> 'snapshot_end'"
            "    AND (op = 'delete' OR document IS NOT NULL)"
            f"  QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY {order_by}) = 1"
            ") WHERE op <> 'delete' AND (cluster_time_s > $s OR (cluster_time_s = $s AND cluster_time_inc >= $i))",
            {"s": cut_s, "i": cut_inc},
        )
        if version is not None:
            con.execute(
                "INSERT INTO load_state VALUES (?, ?, ?, now()) ON CONFLICT (source) DO UPDATE SET "
                "delta_version = excluded.delta_version, "
                "rows_loaded = load_state.rows_loaded + excluded.rows_loaded, loaded_at = excluded.loaded_at",
                [SOURCE, version, new_changes],
            )
        if aggregates is not None:
            con.execute(f"CREATE OR REPLACE VIEW {AGGREGATES_VIEW} AS {_aggregates_select(aggregates)}")
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise WarehouseError(
            f"loading {incoming.num_rows} silver rows failed and nothing was written: {exc}. If the lake was "
            "written by another version of the streaming job, reprocess it into a new LAKE_PATH "
            "(`lakehouse --lake-path NEW_FOLDER replay --into lake --from-beginning`)"
        ) from exc
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("incoming_arrow")
    return new_changes


def with_v2_identity(rows: pa.Table) -> pa.Table:
    """Envelope v1 events carry the _id as text (1001 and "1001" collided); their identity is derived
    again from their document_key, as v2 events carry it (lakehouse/events.py)."""
    if rows.num_rows == 0 or "schema_version" not in rows.column_names:
        return rows
    v1 = pc.fill_null(pc.less(rows["schema_version"], 2), True)
    if not pc.any(v1).as_py():
        return rows
    doc_ids = [
        events.identity_of_v1(key, doc_id) if old and doc_id != events.WHOLE_COLLECTION else doc_id
        for old, key, doc_id in zip(v1.to_pylist(), rows["document_key"].to_pylist(), rows["doc_id"].to_pylist(),
                                    strict=True)
    ]
    return rows.set_column(rows.column_names.index("doc_id"), "doc_id", pa.array(doc_ids, pa.string()))


def _aggregates_select(path: Path) -> str:
    """The streaming aggregates' live Parquet files, as the Delta log lists them now."""
    if not DeltaTable.is_deltatable(str(path)):
        return AGGREGATES_EMPTY
    files = DeltaTable(str(path)).file_uris()
    if not files:
        return AGGREGATES_EMPTY
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"SELECT * FROM read_parquet([{quoted}], union_by_name = true)"


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def rebuild(settings: Settings) -> LoadResult:
    """The warehouse from the whole lake, built in a new file that replaces the old one only once
    complete; a file that is not this pipeline's warehouse is never replaced."""
    target = settings.warehouse_path
    if target.exists():
        with contextlib.suppress(OtherSchemaVersion):
            connect(target).close()
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
