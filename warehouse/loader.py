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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from lakehouse.adapters.delta import LakeTable
from lakehouse.contracts import events, tables, types
from lakehouse.contracts.formats import Format, OtherFormat
from lakehouse.contracts.types import ident
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.config import Settings
from lakehouse.core.errors import LakehouseError, Permanent, Transient
from lakehouse.core.files import write_text_atomically
from lakehouse.core.progress import Progress
from warehouse import metrics
from warehouse.schema import (
    LAKE_VIEWS,
    SOURCE_ORDER,
    WAREHOUSE_VERSION,
    WarehouseSchema,
    cutoff,
    empty_select,
    load_source,
)

log = logging.getLogger(__name__)

SOURCE = tables.SILVER
REBUILD = "lakehouse replay --into warehouse --from-beginning"
# change-table column -> the silver column it is loaded from (the rest have the same name, or are set on load)
_FROM_SILVER = {"document": "full_document"}
# Silver columns every load needs (collection columns missing from an older lake are read as nulls).
SILVER_COLUMNS_NEEDED = (*(_FROM_SILVER.get(c, c) for c, _ in tables.CHANGE_COLUMNS), "kafka_topic",
                         "kafka_partition", "kafka_offset", "schema_version")
# The warehouse file's format. A later release that changes it adds a step here (version -> a function of
# the open connection, inside the transaction that then stamps the new version): `lakehouse load` carries
# the file forward in place; readers refuse it until then.
WAREHOUSE_FORMAT: Format[duckdb.DuckDBPyConnection] = Format("a warehouse", WAREHOUSE_VERSION, REBUILD)


@dataclass(frozen=True)
class LoadResult:
    delta_version: int | None
    rows_read: int
    new_changes: int
    current: dict[str, int] = field(default_factory=dict)  # collection -> documents in its current state


class WarehouseError(LakehouseError, RuntimeError):
    """Bad input the operator has to act on; the message names the file and the next step."""


class LakeMissing(WarehouseError, Transient):
    pass


class OtherSchemaVersion(WarehouseError, Permanent):
    """The file is this pipeline's warehouse, of another format: what a rebuild replaces."""


class WarehouseLocked(WarehouseError, Transient):
    """Another process holds the file (DuckDB: one writer, or several readers, at a time)."""


LOCK_WAIT_S = 60.0  # how long a one-off command waits for another process to let go of the file


def connect(path: Path, read_only: bool = False, wait: float = LOCK_WAIT_S,
            schema: WarehouseSchema | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse; a writer (not read_only) creates what `schema` (the captured collections)
    needs when the file is new, a file of an older format is upgraded in place (WAREHOUSE_FORMAT), and a
    collection new to the spec gets its tables. A file that is not a warehouse of this format is refused
    rather than written into. While another process holds the file (a reader holds it against the writer and the writer
    against readers) wait up to `wait` seconds with backoff, then raise WarehouseLocked."""
    if read_only:
        require_warehouse(path)
    elif schema is None:
        raise ValueError("a writer opens the warehouse with the schema of the captured collections")
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
                if not read_only:
                    metrics.LOADER_LOCKED.inc()
                log.info("warehouse %s is held by another process (%s); waiting for it", path,
                         holder.group(1) if holder else "unknown")
                said = True
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        except duckdb.Error as exc:
            raise _unopenable(path, exc) from exc
    try:
        _check_or_create(con, path, schema)
    except BaseException:
        con.close()
        raise
    return con


def open_warehouse(settings: Settings, read_only: bool = False, wait: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """The configured warehouse, with the tables of the captured collections."""
    return connect(settings.warehouse_path, read_only, wait, None if read_only else WarehouseSchema.of(settings))


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


def _present(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """Base table -> its columns, in one query."""
    present: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE t.table_schema = 'main' AND t.table_type = 'BASE TABLE'"
    ).fetchall():
        present.setdefault(table, set()).add(column)
    return present


def _meta(con: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
    """warehouse_meta's keys and values; None when the file has no such table."""
    try:
        return dict(con.execute("SELECT key, value FROM warehouse_meta").fetchall())
    except duckdb.CatalogException:
        return None


def _check_or_create(con: duckdb.DuckDBPyConnection, path: Path, schema: WarehouseSchema | None) -> None:
    meta = _meta(con)
    if meta is not None and meta.get("format_version") == str(WAREHOUSE_VERSION) and (
            schema is None or meta.get("schema_fingerprint") == schema.fingerprint()):
        return  # this format, made by these very statements: nothing to check or create (milliseconds)
    present = _present(con)
    if present and "warehouse_meta" not in present:
        raise WarehouseError(
            f"{path} is a DuckDB database but not this pipeline's warehouse (it has tables "
            f"{', '.join(sorted(present))} and no warehouse_meta). Point WAREHOUSE_PATH/--warehouse-path at "
            f"another file, or move this one away and run `{REBUILD}`"
        )
    steps: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
    if present:
        steps = _upgrade_steps(meta or {}, path, writer=schema is not None)
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
            step(con)
        if steps:
            log.warning("upgraded the warehouse %s in place to format v%d", path, WAREHOUSE_VERSION)
        for statement in schema.ddl():
            con.execute(statement)
        _add_new_columns(con, path, schema, _present(con))
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


def _upgrade_steps(meta: dict[str, str], path: Path,
                   writer: bool) -> list[Callable[[duckdb.DuckDBPyConnection], None]]:
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


def silver_table(settings: Settings) -> LakeTable | None:
    """The lake's silver table; None while the streaming job has not written it yet."""
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
    missing = [c for c in SILVER_COLUMNS_NEEDED if c not in have and c not in tables.OPTIONAL_SILVER]
    if missing:
        raise WarehouseError(
            f"the silver table {path} lacks column(s) {', '.join(missing)} that the warehouse loads: it was "
            "written by another version of the streaming job. Reprocess Kafka into a new lake with "
            "`lakehouse --lake-path NEW_FOLDER replay --into lake --from-beginning` and load from there"
        )
    return table


def _new_files(silver: LakeTable, since_version: int | None) -> list[str]:
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
    wanted: dict[str, str] = dict.fromkeys(SILVER_COLUMNS_NEEDED, "")
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
    table = pa.Table.from_batches(batches, schema=scanner.projected_schema)
    for name in sorted(tables.OPTIONAL_SILVER - set(table.column_names)):
        table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    for spec in collections:
        for name, kind in spec.columns:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, types.arrow(kind)))
    return table


def loaded_versions(con: duckdb.DuckDBPyConnection, schema: WarehouseSchema) -> dict[str, int | None]:
    """Per collection, the silver version its tables are loaded up to (None: never loaded)."""
    rows = dict(con.execute("SELECT source, delta_version FROM load_state").fetchall())
    return {spec.name: rows.get(load_source(spec)) for spec in schema.collections}


def current_counts(con: duckdb.DuckDBPyConnection, schema: WarehouseSchema) -> dict[str, int]:
    return {spec.name: count(con, spec.table) for spec in schema.collections}


LAKE_ID = "lake_silver_table_id"  # warehouse_meta: the silver table (its Delta id) the warehouse was loaded from


class LakeMismatch(WarehouseError):
    """The warehouse was loaded from another lake than the one configured; the message says what to do."""


def check_lake(con: duckdb.DuckDBPyConnection, settings: Settings, silver: LakeTable | None) -> None:
    """Refuse a warehouse loaded from another lake than settings.lake_path: the lake deleted or replaced,
    another project's lake, or a warehouse copied from elsewhere. Reading on would load nothing, or the
    wrong versions, or fail deep in delta-rs."""
    if "load_state" not in _present(con):
        return
    loaded = [v for (v,) in con.execute("SELECT delta_version FROM load_state").fetchall() if v is not None]
    if not loaded:
        return
    recorded = (_meta(con) or {}).get(LAKE_ID)
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
    try:
        silver = silver_table(settings)
    except LakeMissing:
        silver = None  # a loaded warehouse whose lake is gone says so; a new one waits for the lake
    con = connect(settings.warehouse_path, read_only=True)
    try:
        check_lake(con, settings, silver)
    finally:
        con.close()


def load(settings: Settings) -> LoadResult:
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
                incoming = read_silver(silver, tuple(specs), _new_files(silver, since),
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


def silver_version(settings: Settings) -> int | None:
    """The lake's silver version now (None: no lake or table yet), without opening the warehouse: a
    loader that polls often opens DuckDB only when there is something new."""
    if not settings.lake_path.exists():
        return None
    table = LakeTable.open(settings.table_path(SOURCE))
    return None if table is None else table.version()


def load_if_possible(settings: Settings) -> LoadResult | None:
    """A load for callers that run beside the streaming job and the readers (run-all, the loader's
    reconcile rounds): None when the lake is not there yet or another process holds the warehouse."""
    try:
        return load(settings)
    except (LakeMissing, WarehouseLocked):
        return None


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


def refresh_lake_views(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Point each view of a lake table (the aggregates, the quality checks) at its live files now."""
    for view, (table, columns) in LAKE_VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {view} AS {_lake_select(settings.table_path(table), columns)}")


def apply_collection(con: duckdb.DuckDBPyConnection, spec: CollectionSpec, incoming: pa.Table,
                     replace: str | None = None) -> int:
    """Insert a collection's new changes and bring its current state up to date (the caller holds the
    transaction). A load costs what it brings: only documents whose newest change (source order) is
    among the new ones are rewritten. A complete snapshot (snapshot_end) or a replay's `replace` (SQL over
    its changes, warehouse/replace.py, whose matches are deleted first) re-derives from all changes.
    Returns changes inserted."""
    changes = ident(spec.changes)
    change_cols = [c for c, _ in tables.changes_columns(spec)]
    select_incoming = ", ".join(
        "now() AS loaded_at" if c == "loaded_at" else f"i.{_FROM_SILVER[c]} AS {c}" if c in _FROM_SILVER
        else f"i.{ident(c)}" for c in change_cols
    )
    refuse_development_events(incoming)
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


def refuse_development_events(rows: pa.Table) -> None:
    """Release 1 reads envelope v2 (lakehouse/contracts/formats.py); a lake holding v1 events (a development
    build's, whose doc_id was the _id as text, where 1001 and "1001" collided) is made again, not upgraded."""
    if rows.num_rows == 0 or "schema_version" not in rows.column_names:
        return
    old = pc.sum(pc.cast(pc.fill_null(pc.less(rows["schema_version"], events.SCHEMA_VERSION), False), pa.int64()))
    if old.as_py():
        raise LakeMismatch(
            f"the lake's silver holds {old.as_py()} change events of envelope v1, from a development build before "
            f"release 1 (this release reads v{events.SCHEMA_VERSION}); make the lake again: move LAKE_PATH, "
            "STATE_DIR/spark and the warehouse away, then run `lakehouse replay --into kafka --from-beginning` "
            "and the streaming job (or `make run-all`)")


def _lake_select(path: Path, columns: types.Columns) -> str:
    """A lake table's live Parquet files, as the Delta log lists them now."""
    table = LakeTable.open(path)
    if table is None:
        return empty_select(columns)
    files = table.file_uris()
    if not files:
        return empty_select(columns)
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"SELECT * FROM read_parquet([{quoted}], union_by_name = true)"


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {ident(table)}").fetchall()[0][0])


def rebuild(settings: Settings) -> LoadResult:
    """The warehouse from the whole lake, built in a new file that replaces the old one only once
    complete; a file that is not this pipeline's warehouse is never replaced."""
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


def summary(settings: Settings) -> dict[str, object]:
    """What the warehouse holds, for `status`: per captured collection the silver version loaded last,
    when, its changes and current documents. One short read-only look; a WarehouseError when it cannot
    be read now."""
    schema = WarehouseSchema.of(settings)
    con = connect(settings.warehouse_path, read_only=True)
    try:
        check_lake(con, settings, silver_table(settings))
        present = _present(con)
        state = {source: (version, at) for source, version, at in
                 con.execute("SELECT source, delta_version, loaded_at FROM load_state").fetchall()}
        collections: dict[str, dict[str, object]] = {}
        for spec in schema.collections:
            version, at = state.get(load_source(spec), (None, None))
            if spec.changes not in present or spec.table not in present:
                collections[spec.name] = {"loaded_version": None, "loaded_at": None, "changes": 0, "current": 0,
                                          "newest_cluster_time_s": None, "table": spec.table}
                continue
            changes, current, newest = con.execute(
                f"SELECT (SELECT count(*) FROM {ident(spec.changes)}), (SELECT count(*) FROM {ident(spec.table)}), "
                f"(SELECT max(cluster_time_s) FROM {ident(spec.changes)} WHERE op <> 'snapshot_end')").fetchall()[0]
            collections[spec.name] = {"loaded_version": version, "loaded_at": at, "changes": changes,
                                      "current": current, "newest_cluster_time_s": newest, "table": spec.table}
    except duckdb.Error as exc:
        raise WarehouseError(str(exc)) from exc
    finally:
        con.close()
    versions = [c["loaded_version"] for c in collections.values()]
    loaded = [c["loaded_at"] for c in collections.values() if c["loaded_at"] is not None]
    newest = [c["newest_cluster_time_s"] for c in collections.values() if c["newest_cluster_time_s"] is not None]
    return {"loaded_version": None if None in versions or not versions else min(versions),  # type: ignore[type-var]
            "loaded_at": max(loaded) if loaded else None,  # type: ignore[type-var]
            "newest_cluster_time_s": max(newest) if newest else None,  # type: ignore[type-var]
            "collections": collections}
