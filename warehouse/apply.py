"""The merge: a collection's new changes inserted once (deduplicated by change_id, the first delivery
kept) and its current state brought up to date in source order, inside the caller's transaction. A
document's current row is rewritten only when its newest change is among the new ones, so a late or
repeated change never overwrites a newer one; a complete snapshot or a replay re-derives from all."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pyarrow as pa

from lakehouse.contracts import events, tables
from lakehouse.contracts.types import ident
from lakehouse.core.collections import CollectionSpec
from warehouse.errors import WarehouseError
from warehouse.lake import sources_of
from warehouse.schema import SOURCE_ORDER, cutoff


def in_transaction(con: duckdb.DuckDBPyConnection, work: Callable[[], object], what: str) -> None:
    """`work` in one transaction: all of it, or (on any error) none of it."""
    con.execute("BEGIN TRANSACTION")
    try:
        work()
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise WarehouseError(
            f"{what} failed and nothing was written: {exc}. If the lake was written by another version of the "
            "streaming job, reprocess it into a new LAKE_PATH "
            "(`lakehouse --lake-path NEW_FOLDER replay --into lake --from-beginning`)"
        ) from exc
    except BaseException:
        con.execute("ROLLBACK")
        raise


def apply_collection(con: duckdb.DuckDBPyConnection, spec: CollectionSpec, incoming: pa.Table,
                     replace: str | None = None) -> int:
    """Insert a collection's new changes and bring its current state up to date (the caller holds the
    transaction). A load costs what it brings: only documents whose newest change (source order) is
    among the new ones are rewritten. A complete snapshot (snapshot_end) or a replay's `replace` (SQL over
    its changes, warehouse/replace.py, whose matches are deleted first) re-derives from all changes.
    Returns changes inserted."""
    changes = ident(spec.changes)
    change_cols = [c for c, _ in tables.changes_columns(spec)]
    sources = sources_of(spec)
    select_incoming = ", ".join(
        "now() AS loaded_at" if c == "loaded_at" else f"i.{ident(sources[c])} AS {ident(c)}" if c in sources
        else f"i.{ident(c)}" for c in change_cols
    )
    rows = incoming
    con.register("incoming_arrow", rows.append_column("_row", pa.array(range(rows.num_rows), pa.int64())))
    try:
        everything = bool(con.execute(
            "SELECT count(*) FROM incoming_arrow WHERE op = 'snapshot_end'").fetchall()[0][0])
        if replace:
            everything |= bool(con.execute(
                f"SELECT count(*) FROM {changes} WHERE op = 'snapshot_end' AND ({replace})").fetchall()[0][0])
            con.execute(f"CREATE OR REPLACE TEMP TABLE replaced AS SELECT DISTINCT doc_id FROM {changes} "
                        f"WHERE {replace}")
            con.execute(f"DELETE FROM {changes} WHERE {replace}")
        # New: the first delivery (lowest Kafka offset) of each change_id the table does not hold yet.
        # Picked on the narrow key columns, then copied whole (a window over the wide rows costs 5x).
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE fresh AS SELECT {select_incoming} FROM incoming_arrow i SEMI JOIN ("
            "  SELECT arg_min(n._row, n.kafka_offset) AS _row FROM incoming_arrow n"
            f"  ANTI JOIN {changes} c ON c.change_id = n.change_id GROUP BY n.change_id"
            ") k ON k._row = i._row"
        )
        new_changes = count(con, "fresh")
        con.execute(f"INSERT INTO {changes} ({', '.join(ident(c) for c in change_cols)}) "
                    f"SELECT {', '.join(ident(c) for c in change_cols)} FROM fresh")
        if everything or replace:
            # A complete snapshot is news for every document; a replay for the documents of its range.
            touched = (f"SELECT doc_id FROM {changes} UNION SELECT doc_id FROM {ident(spec.table)}" if everything
                       else "SELECT doc_id FROM replaced UNION SELECT doc_id FROM fresh")
            con.execute(f"CREATE OR REPLACE TEMP TABLE touched AS {touched}")
            _rederive(con, spec)
            con.execute("DROP TABLE touched")
            con.execute("DROP TABLE IF EXISTS replaced")
        else:
            _apply_newest(con, spec)
        con.execute("DROP TABLE fresh")
    finally:
        con.unregister("incoming_arrow")
    return new_changes


def _is_version(alias: str) -> str:
    """A change that can be a document's version: an update whose document was deleted before lookup
    carries no state (the delete that follows it will arrive), a snapshot_end is no document's."""
    a = f"{alias}."
    return (f"{a}op <> 'snapshot_end' AND ({a}op = 'delete' OR {a}document IS NOT NULL) "
            f"AND {a}doc_id <> '{events.WHOLE_COLLECTION}'")

_ORDER = ", ".join(SOURCE_ORDER)

_NEWEST_FIRST = ", ".join(f"{c} DESC" for c in SOURCE_ORDER)


def _write_current(con: duckdb.DuckDBPyConnection, spec: CollectionSpec, rows: str, versions: str) -> None:
    """Replace the current rows of the documents in `versions` (doc_id, change_id of each one's newest
    change; `rows` holds those changes): a document whose newest change is a delete, or is older than
    the newest complete snapshot (it was deleted while history was unavailable), has none."""
    current = ident(spec.table)
    current_cols = [c for c, _ in tables.current_columns(spec)]
    select = ", ".join({"last_change_id": "v.change_id AS last_change_id",
                        "updated_at": "v.event_time AS updated_at"}.get(c, f"v.{ident(c)}") for c in current_cols)
    con.execute(f"DELETE FROM {current} WHERE doc_id IN (SELECT doc_id FROM {versions})")
    con.execute(
        f"INSERT INTO {current} ({', '.join(ident(c) for c in current_cols)}) SELECT {select} "
        f"FROM {rows} v SEMI JOIN {versions} n ON n.change_id = v.change_id, {cutoff(spec.changes)} c "
        "WHERE v.op <> 'delete' AND (v.cluster_time_s, v.cluster_time_inc) >= (c.cluster_time_s, c.cluster_time_inc)"
    )


def _apply_newest(con: duckdb.DuckDBPyConnection, spec: CollectionSpec) -> None:
    """Each document's newest new change, unless the table already holds a newer change of it, becomes
    its version: a late or repeated change never overwrites a newer one, and a deleted document stays
    deleted when an older change of it arrives late."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE newest AS SELECT doc_id, change_id, {_ORDER} FROM fresh n "
        f"WHERE {_is_version('n')} QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY {_NEWEST_FIRST}) = 1")
    con.execute(
        f"DELETE FROM newest n WHERE EXISTS (SELECT 1 FROM {ident(spec.changes)} c "
        f"WHERE c.doc_id = n.doc_id AND {_is_version('c')} AND ({', '.join(f'c.{o}' for o in SOURCE_ORDER)}) > "
        f"({', '.join(f'n.{o}' for o in SOURCE_ORDER)}))"
    )
    _write_current(con, spec, "fresh", "newest")
    con.execute("DROP TABLE newest")


def _rederive(con: duckdb.DuckDBPyConnection, spec: CollectionSpec) -> None:
    """The current state of the documents in `touched`, from all their changes by source order."""
    con.execute(f"DELETE FROM {ident(spec.table)} WHERE doc_id IN (SELECT doc_id FROM touched)")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE newest AS SELECT doc_id, change_id FROM {ident(spec.changes)} c "
        f"WHERE doc_id IN (SELECT doc_id FROM touched) AND {_is_version('c')} "
        f"QUALIFY row_number() OVER (PARTITION BY doc_id ORDER BY {_NEWEST_FIRST}) = 1")
    _write_current(con, spec, ident(spec.changes), "newest")
    con.execute("DROP TABLE newest")


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {ident(table)}").fetchall()[0][0])
