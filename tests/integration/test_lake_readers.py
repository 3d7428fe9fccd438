"""Every table delta-spark writes stays readable outside Spark: delta-rs (the loader, status, reconcile, the
notebooks) and DuckDB (the warehouse loaded from it), after several commits, Delta's checkpoint and commits
after it."""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable

from lakehouse.adapters.delta import LakeTable, ensure_table
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from streaming.job import start_derived
from streaming.lake_writer import lake_table_properties
from tests.helpers import drain, lake_rows, stream_lake, warehouse_rows
from warehouse.loader import load


def test_every_table_spark_wrote_reads_with_delta_rs_and_loads_into_duckdb(spark: object, settings: Settings) -> None:
    client = connect_mongo(settings)
    drain(settings)  # an empty snapshot first: the changes below are streamed (orders placed are inserts)
    OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=26).run(120)
    drain(settings)
    # Delta checkpoints every 3 commits here (a table property, as any table may set; the default is 10),
    # so a few batches of 30 rows reach past a checkpoint: each batch costs seconds here whatever its size.
    for name, schema in tables.lake_schemas(tables.attribute_columns(settings)).items():
        ensure_table(settings.table_path(name), schema,
                     {**lake_table_properties(name), "delta.checkpointInterval": "3"})
    # What `lakehouse stream --available-now` runs (the lake query, then the derived ones), in the session's
    # Spark: no JVM of its own to start.
    run = settings.replace(max_rows_per_batch=30)
    stream_lake(spark, run)
    for query in start_derived(spark, run, available_now=True):  # type: ignore[arg-type]
        query.awaitTermination(600)
        assert query.exception() is None, query.exception()

    silver = DeltaTable(str(settings.table_path(tables.SILVER)))
    assert silver.version() > 3  # commits after the checkpoint too: a reader combines both
    assert (settings.table_path(tables.SILVER) / "_delta_log" / "_last_checkpoint").exists()
    for name in tables.lake_schemas(tables.attribute_columns(settings)):
        table = DeltaTable(str(settings.table_path(name)))
        protocol = table.protocol()
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2), (name, protocol)
        assert not protocol.reader_features and not protocol.writer_features, (name, protocol)
        table.to_pyarrow_table()  # every column, every file
    rows = lake_rows(settings, tables.SILVER)
    # Silver's files keep min/max for the columns readers filter by alone, and every file its row count.
    actions = pa.table(silver.get_add_actions(flatten=True))
    kept = {name.removeprefix("min.") for name in actions.column_names if name.startswith("min.")}
    assert kept and kept <= set(tables.STATS_COLUMNS[tables.SILVER]), kept
    assert sum(LakeTable(settings.table_path(tables.SILVER)).rows_per_file().values()) == len(rows)
    orders = {r["change_id"] for r in rows if r["collection"] == "orders"}
    assert orders and lake_rows(settings, tables.ORDER_LINES)

    load(settings)
    assert warehouse_rows(settings, "SELECT count(DISTINCT change_id) FROM fact_order_changes")[0][0] == len(orders)
