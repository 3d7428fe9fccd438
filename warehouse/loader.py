"""Silver Delta table -> DuckDB, incrementally, deduplicated by change_id, applied in source order.

Each load reads only the Delta files added since the version it loaded last, and runs in one DuckDB
transaction: a crash mid-load leaves the previous state. `orders` is re-derived for every touched
document from all its changes by source order, so a late or repeated change never overwrites a
newer one, and loading the same data twice changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
from deltalake import DeltaTable

from lakehouse import tables
from lakehouse.config import Settings
from warehouse.schema import DDL, FACT_COLUMNS, ORDERS_COLUMNS, SOURCE_ORDER

log = logging.getLogger(__name__)

SOURCE = tables.SILVER


@dataclass(frozen=True)
class LoadResult:
    delta_version: int | None
    rows_read: int
    new_changes: int
    orders: int


class WarehouseError(RuntimeError):
    pass


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        if read_only:
            return duckdb.connect(str(path), read_only=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise WarehouseError(
            f"cannot open the warehouse {path}: {exc}. If it is not a DuckDB file of this pipeline, move it "
            "away and run `lakehouse replay --into warehouse --from-beginning` to rebuild it from the lake"
        ) from exc
    for statement in DDL:
        con.execute(statement)
    return con


def _new_files(silver: DeltaTable, since_version: int | None) -> list[str]:
    current = set(silver.file_uris())
    if since_version is None:
        return sorted(current)
    before = set(DeltaTable(silver.table_uri, version=since_version).file_uris())
    return sorted(current - before)


def load(settings: Settings) -> LoadResult:
    silver_path = settings.table_path(tables.SILVER)
    con = connect(settings.warehouse_path)
    try:
        if not DeltaTable.is_deltatable(str(silver_path)):
            log.debug("no silver table at %s yet; nothing to load", silver_path)
            return LoadResult(None, 0, 0, _count(con, "orders"))
        silver = DeltaTable(str(silver_path))
        version = silver.version()
        rows = con.execute("SELECT delta_version FROM load_state WHERE source = ?", [SOURCE]).fetchall()
        loaded_version = rows[0][0] if rows else None
        if loaded_version == version:
            return LoadResult(version, 0, 0, _count(con, "orders"))
        files = _new_files(silver, loaded_version)
        dataset = pads.dataset(files, schema=silver.to_pyarrow_dataset().schema, format="parquet")
        incoming = dataset.to_table(filter=pads.field("collection") == "orders")
        new_changes = _apply(con, incoming, version)
        log.info("loaded silver v%s: %d rows read, %d new changes", version, incoming.num_rows, new_changes)
        return LoadResult(version, incoming.num_rows, new_changes, _count(con, "orders"))
    finally:
        con.close()


def _apply(con: duckdb.DuckDBPyConnection, incoming: object, version: int) -> int:
    fact_cols = [c for c, _ in FACT_COLUMNS]
    select_incoming = ", ".join(
        "full_document AS document" if c == "document" else "now() AS loaded_at" if c == "loaded_at" else c
        for c in fact_cols
    )
    order_by = ", ".join(f"{c} DESC" for c in SOURCE_ORDER)
    orders_cols = [c for c, _ in ORDERS_COLUMNS]
    orders_select = ", ".join(
        {"last_change_id": "change_id AS last_change_id",
         "updated_at": "event_time AS updated_at"}.get(c, c)
        for c in orders_cols
    )
    con.register("incoming_arrow", incoming)
    con.execute("BEGIN TRANSACTION")
    try:
        before = _count(con, "fact_order_changes")
        con.execute(
            f"INSERT INTO fact_order_changes ({', '.join(fact_cols)}) "
            f"SELECT {select_incoming} FROM incoming_arrow "
            "QUALIFY row_number() OVER (PARTITION BY change_id ORDER BY kafka_offset) = 1 "
            "ON CONFLICT DO NOTHING"
        )
        new_changes = _count(con, "fact_order_changes") - before
        # A complete snapshot (snapshot_end) is news for every document; other changes for their own.
        touched_from = (
            "fact_order_changes" if con.execute(
                "SELECT count(*) FROM incoming_arrow WHERE op = 'snapshot_end'").fetchall()[0][0]
            else "incoming_arrow"
        )
        con.execute("CREATE OR REPLACE TEMP TABLE touched AS "
                    f"SELECT DISTINCT doc_id FROM {touched_from} WHERE op <> 'snapshot_end'")
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
            "  WHERE doc_id IN (SELECT doc_id FROM touched) AND (op = 'delete' OR document IS NOT NULL)"
            f"  QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY {order_by}) = 1"
            ") WHERE op <> 'delete' AND (cluster_time_s > $s OR (cluster_time_s = $s AND cluster_time_inc >= $i))",
            {"s": cut_s, "i": cut_inc},
        )
        con.execute(
            "INSERT INTO load_state VALUES (?, ?, ?, now()) ON CONFLICT (source) DO UPDATE SET "
            "delta_version = excluded.delta_version, rows_loaded = load_state.rows_loaded + excluded.rows_loaded,"
            " loaded_at = excluded.loaded_at",
            [SOURCE, version, new_changes],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("incoming_arrow")
    return new_changes


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
