"""What the warehouse holds, for `status`: one short read-only look."""

from __future__ import annotations

import duckdb

from lakehouse.contracts.types import ident
from lakehouse.core.config import Settings, for_stage
from warehouse.connection import connect
from warehouse.errors import WarehouseError
from warehouse.lake import check_lake, silver_table
from warehouse.migrate import present_tables
from warehouse.schema import WarehouseSchema, load_source


def summary(settings: Settings) -> dict[str, object]:
    """What the warehouse holds, for `status`: per captured collection the silver version loaded last,
    when, its changes and current documents. One short read-only look; a WarehouseError when it cannot
    be read now."""
    settings = for_stage(settings, "warehouse")
    schema = WarehouseSchema.of(settings)
    con = connect(settings.warehouse_path, read_only=True)
    try:
        check_lake(con, settings, silver_table(settings))
        present = present_tables(con)
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
