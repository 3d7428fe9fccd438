"""Opening the warehouse: DuckDB lets one writer or several readers hold the file at a time, so an
opener waits (with backoff, up to a deadline) while another process holds it."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import duckdb

from lakehouse.core.config import Settings
from warehouse import metrics
from warehouse.errors import REBUILD, WarehouseError, WarehouseLocked
from warehouse.migrate import check_or_create
from warehouse.schema import WarehouseSchema

log = logging.getLogger(__name__)

LOCK_WAIT_S = 60.0  # how long a one-off command waits for another process to let go of the file


# One process's turn at the warehouse file: DuckDB refuses to open one file read-only and read-write in
# the same process at once, so a reconcile round's read-only copy (its own thread) and the loads the
# loader service makes during the round take turns.
same_process_turn = threading.Lock()


def connect(path: Path, read_only: bool = False, wait: float = LOCK_WAIT_S,
            schema: WarehouseSchema | None = None, bookkeeping_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse; a writer (not read_only) creates what `schema` (the captured collections)
    needs when the file is new, a file of an older format is upgraded in place (WAREHOUSE_FORMAT), and a
    collection new to the spec gets its tables. A file that is not a warehouse of this format is refused
    rather than written into; a reader of `bookkeeping_only` (load_state and warehouse_meta, the same in
    every format) also takes a file a writer has yet to upgrade. While another process holds the file (a
    reader holds it against the writer and the writer against readers) wait up to `wait` seconds with
    backoff, then raise WarehouseLocked."""
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
        check_or_create(con, path, schema, bookkeeping_only)
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
