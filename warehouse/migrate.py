"""The warehouse file's format: created when new, checked when opened, carried forward in place by a
writer when a later release changes it (WAREHOUSE_FORMAT), a collection new to the spec given its
tables and a column new to the spec added. A file that is not a warehouse of this release is refused."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lakehouse.contracts import types
from lakehouse.contracts.formats import Format, OtherFormat
from lakehouse.contracts.types import ident
from warehouse.errors import REBUILD, OtherSchemaVersion, WarehouseError
from warehouse.schema import LAKE_VIEWS, WAREHOUSE_VERSION, WarehouseSchema, empty_select

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Upgrading:
    """What an upgrade step works on: the open file (inside the transaction that then stamps the new
    version) and the schema the writer opened it with."""

    con: duckdb.DuckDBPyConnection
    schema: WarehouseSchema


def _key_columns_named_by_the_spec(file: Upgrading) -> None:
    """v1 -> v2 (release 2): every collection's tables held its Kafka key in a column `order_id`. Now the
    spec names it (orders: `order_id`, unchanged), and a collection keyed by its _id has none: doc_id holds
    that. Tables of a collection no longer configured keep the old column, which no statement reads."""
    present = present_tables(file.con)
    for spec in file.schema.collections:
        for table in (spec.table, spec.changes):
            if "order_id" not in present.get(table, set()) or spec.key_column == "order_id":
                continue
            if spec.key_column is None:
                file.con.execute(f"ALTER TABLE {ident(table)} DROP COLUMN order_id")
            else:
                file.con.execute(f"ALTER TABLE {ident(table)} RENAME COLUMN order_id TO {ident(spec.key_column)}")


# The warehouse file's format. A release that changes it adds a step here (version -> a function of the
# file being upgraded): `lakehouse load` carries the file forward in place; readers refuse it until then.
WAREHOUSE_FORMAT: Format[Upgrading] = Format("a warehouse", WAREHOUSE_VERSION, REBUILD,
                                             {1: _key_columns_named_by_the_spec})


def present_tables(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """Base table -> its columns, in one query."""
    present: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE t.table_schema = 'main' AND t.table_type = 'BASE TABLE'"
    ).fetchall():
        present.setdefault(table, set()).add(column)
    return present


def stored_meta(con: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
    """warehouse_meta's keys and values; None when the file has no such table."""
    try:
        return dict(con.execute("SELECT key, value FROM warehouse_meta").fetchall())
    except duckdb.CatalogException:
        return None


def check_or_create(con: duckdb.DuckDBPyConnection, path: Path, schema: WarehouseSchema | None,
                    bookkeeping_only: bool = False) -> None:
    meta = stored_meta(con)
    if meta is not None and meta.get("format_version") == str(WAREHOUSE_VERSION) and (
            schema is None or meta.get("schema_fingerprint") == schema.fingerprint()):
        return  # this format, made by these very statements: nothing to check or create (milliseconds)
    present = present_tables(con)
    if present and "warehouse_meta" not in present:
        raise WarehouseError(
            f"{path} is a DuckDB database but not this pipeline's warehouse (it has tables "
            f"{', '.join(sorted(present))} and no warehouse_meta). Point WAREHOUSE_PATH/--warehouse-path at "
            f"another file, or move this one away and run `{REBUILD}`"
        )
    steps: list[Callable[[Upgrading], None]] = []
    if present:
        steps = _upgrade_steps(meta or {}, path, writer=schema is not None or bookkeeping_only)
        for name in ("load_state", "warehouse_meta"):
            if name not in present:
                raise WarehouseError(f"{path}: table {name} is missing; the file was changed by hand or by another "
                                     f"program. Rebuild it with `{REBUILD}`")
    if schema is None:
        if not present:
            raise WarehouseError(f"{path} is not a warehouse yet: run `lakehouse load` first")
        return
    fingerprint = schema.fingerprint()
    con.execute("BEGIN TRANSACTION")
    try:
        for step in steps:
            step(Upgrading(con, schema))
        if steps:
            log.warning("upgraded the warehouse %s in place to format v%d", path, WAREHOUSE_VERSION)
        for statement in schema.ddl():
            con.execute(statement)
        _add_new_columns(con, path, schema, present_tables(con))
        con.execute("INSERT INTO warehouse_meta VALUES ('format_version', ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value", [str(WAREHOUSE_VERSION)])
        for view, (_, columns) in LAKE_VIEWS.items():  # before the views that read them
            if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ?", [view]).fetchall():
                con.execute(f"CREATE VIEW {view} AS {empty_select(columns)}")
        for statement in schema.view_ddl():
            con.execute(statement)
        con.execute("INSERT INTO warehouse_meta VALUES ('schema_fingerprint', ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value", [fingerprint])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _upgrade_steps(meta: dict[str, str], path: Path, writer: bool) -> list[Callable[[Upgrading], None]]:
    """The steps that carry this file to the current format (none when it is current). A file of a
    development build (no format_version), or of a format this release cannot upgrade, is refused with
    the rebuild command; a reader refuses any file not yet upgraded."""
    stored = meta.get("format_version")
    found = int(stored) if stored is not None and stored.isdigit() else None
    if stored is not None and found is None:
        raise OtherSchemaVersion(f"{path}: warehouse_meta's format_version is {stored!r}, not a version; the file "
                                 f"was changed by hand or by another program. Rebuild it with `{REBUILD}`")
    try:
        steps = WAREHOUSE_FORMAT.steps(found, str(path))
    except OtherFormat as exc:
        raise OtherSchemaVersion(f"{exc} (the file is replaced only once the rebuild is complete)") from None
    if steps and not writer:
        raise OtherSchemaVersion(f"{path} is a warehouse of format v{found}; this release reads "
                                 f"v{WAREHOUSE_VERSION}, and a writer such as `lakehouse load` upgrades it in place")
    return list(steps)


def _add_new_columns(con: duckdb.DuckDBPyConnection, path: Path, schema: WarehouseSchema,
                     present: dict[str, set[str]]) -> None:
    """Columns the spec gained since the tables were made are added (null for rows loaded before)."""
    for name, columns in schema.tables.items():
        for column, kind in columns:
            if column not in present.get(name, set()):
                con.execute(f"ALTER TABLE {ident(name)} ADD COLUMN {ident(column)} {types.duckdb(kind)}")
                log.warning("%s: added column %s to %s (collections.toml); rows loaded before have it null until "
                            "the lake is reprocessed and the warehouse rebuilt (`%s`)", path, column, name, REBUILD)
