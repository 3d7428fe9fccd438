"""Warehouse history, views, replays and bad input, on lakes made by hand (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.app.replay import (
    ReplayError,
    StartPoint,
    check_supported,
    parse_offsets,
    parse_token,
    replay,
    start_point,
)
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from tests.lake_fakes import SCHEMA, append_silver, lake_settings, silver_row
from warehouse.connection import connect, open_warehouse
from warehouse.errors import LakeMissing, WarehouseError
from warehouse.lake import require_matching_lake
from warehouse.loader import load, rebuild
from warehouse.schema import WAREHOUSE_VERSION, WarehouseSchema


def query(settings, sql: str) -> list[tuple]:  # noqa: ANN001
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def lake(tmp_path: Path):  # noqa: ANN201
    """Order 1: created, paid, shipped. Order 2: created, cancelled, deleted. Order 3: created (high value)."""
    settings = lake_settings(tmp_path)
    rows = [
        silver_row(0, 1, "insert", "created", "120.00", "cust-1"),
        silver_row(1, 2, "insert", "created", "80.00", "cust-2"),
        silver_row(2, 3, "insert", "created", "1500.00", "cust-1"),
        silver_row(3, 1, "update", "paid", "120.00", "cust-1"),
        silver_row(4, 2, "update", "cancelled", "80.00", "cust-2"),
        silver_row(6, 1, "update", "shipped", "120.00", "cust-1"),
        silver_row(7, 2, "delete", None),
    ]
    append_silver(settings, rows)
    load(settings)
    return settings


def test_orders_history_keeps_every_version_with_validity_and_tombstones(lake) -> None:  # noqa: ANN001
    versions = query(lake, "SELECT doc_id, op, status, valid_from, valid_to, is_tombstone, is_current "
                           "FROM orders_history ORDER BY doc_id, cluster_time_s, cluster_time_inc")
    by_doc: dict[str, list[tuple]] = {}
    for row in versions:
        by_doc.setdefault(row[0], []).append(row[1:])
    assert [v[1] for v in by_doc["1"]] == ["created", "paid", "shipped"]
    assert [v[-1] for v in by_doc["1"]] == [False, False, True]
    for earlier, later in zip(by_doc["1"], by_doc["1"][1:], strict=False):
        assert earlier[3] == later[2]  # valid_to of a version is valid_from of the next
    assert by_doc["1"][-1][3] is None
    assert by_doc["2"][-1][0] == "delete" and by_doc["2"][-1][4] is True  # tombstone
    assert not any(v[-1] for v in by_doc["2"])
    current = {r[0] for r in query(lake, "SELECT doc_id FROM orders_history WHERE is_current")}
    assert current == {r[0] for r in query(lake, "SELECT doc_id FROM orders")} == {"1", "3"}


def test_analytics_views_answer_from_the_current_state(lake) -> None:  # noqa: ANN001
    for name in (*WarehouseSchema.of(lake).views(), "streaming_aggregates"):
        query(lake, f"SELECT * FROM {name}")  # every view is queryable
    assert query(lake, "SELECT day, currency, orders, revenue, high_value_orders FROM revenue_daily") == [
        (datetime(2026, 11, 20, tzinfo=UTC), "USD", 2, Decimal("1620.00"), 1)]
    assert dict(query(lake, "SELECT status, orders FROM orders_by_status")) == {"shipped": 1, "created": 1}
    assert query(lake, "SELECT order_id FROM high_value_orders") == [("o3",)]
    assert query(lake, "SELECT customer_id, revenue, rank_in_currency FROM top_customers") == [
        ("cust-1", Decimal("1620.00"), 1)]
    funnel = {(f, t): n for f, t, n, _ in query(lake, "SELECT * FROM status_funnel")}
    assert funnel == {("(new)", "created"): 3, ("created", "paid"): 1, ("paid", "shipped"): 1,
                      ("created", "cancelled"): 1, ("cancelled", "(deleted)"): 1}


def test_streaming_aggregates_view_reads_the_lakes_aggregates_table(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    append_silver(settings, [silver_row(0, 1, "insert", "created", "5.00")])
    start = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    write_deltalake(str(settings.table_path(tables.AGGREGATES)), pa.table({
        "window_start": pa.array([start], pa.timestamp("us", tz="UTC")),
        "window_end": pa.array([start.replace(minute=1)], pa.timestamp("us", tz="UTC")),
        "status": ["created"], "order_count": pa.array([4], pa.int64()),
        "revenue": pa.array([Decimal("10.00")], pa.decimal128(28, 2)), "granularity": ["1m"],
    }))
    load(settings)
    assert query(settings, "SELECT status, order_count, granularity FROM streaming_aggregates") == [
        ("created", 4, "1m")]


def test_warehouse_replays_from_time_offsets_and_token_are_idempotent(lake, monkeypatch) -> None:  # noqa: ANN001
    # MongoDB says which change follows a token; here, change 3 (cluster time 1001, inc 0).
    monkeypatch.setattr("lakehouse.app.replay._first_change_after", lambda settings, token: (1001, 0))
    before = query(lake, "SELECT * EXCLUDE (loaded_at) FROM fact_order_changes ORDER BY change_id")
    orders = query(lake, "SELECT * FROM orders ORDER BY doc_id")
    starts = [StartPoint("time", time=datetime.fromtimestamp(1001, UTC)),
              StartPoint("offsets", offsets={("t", 0): 4}),
              StartPoint("token", token={"_data": f"{3:04x}"}),
              StartPoint("beginning")]
    said: list[str] = []
    for start in starts:
        for _ in range(2):
            replay(lake, "warehouse", start, say=said.append)
            assert query(lake, "SELECT * EXCLUDE (loaded_at) FROM fact_order_changes ORDER BY change_id") == before
            assert query(lake, "SELECT * FROM orders ORDER BY doc_id") == orders
    assert "4 changes replaced by 4" in said[0]  # cluster time >= 1001: changes 3, 4, 6, 7


def test_dry_run_changes_nothing(lake) -> None:  # noqa: ANN001
    con = duckdb.connect(str(lake.warehouse_path))
    con.execute("DELETE FROM orders")
    con.close()
    said: list[str] = []
    replay(lake, "warehouse", StartPoint("beginning"), dry_run=True, say=said.append)
    replay(lake, "warehouse", StartPoint("time", time=datetime.fromtimestamp(0, UTC)), dry_run=True, say=said.append)
    assert said[0].startswith("dry run: would build a new warehouse from all 7 silver rows")
    assert said[1].startswith("dry run: would replace 7 warehouse changes")
    assert query(lake, "SELECT count(*) FROM orders") == [(0,)]


def test_replay_start_points_are_checked() -> None:
    assert parse_offsets("cdc.shop.orders:0:12, cdc.shop.orders:1:0") == {("cdc.shop.orders", 0): 12,
                                                                         ("cdc.shop.orders", 1): 0}
    assert parse_token('{"_data": "82AB"}') == parse_token("82AB") == {"_data": "82AB"}
    assert start_point(None, "2026-11-23T10:00:00", None, False).time == datetime(2026, 11, 23, 10, tzinfo=UTC)
    for bad in ("orders:0", "orders:x:1", "orders:0:-5", ""):
        with pytest.raises(ReplayError, match="from-offsets"):
            parse_offsets(bad)
    with pytest.raises(ReplayError, match="from-token"):
        parse_token("not hex!")
    with pytest.raises(ReplayError, match="exactly one"):
        start_point("82AB", "2026-11-23", None, False)
    with pytest.raises(ReplayError, match="exactly one"):
        start_point(None, None, None, False)
    with pytest.raises(ReplayError, match="use --from-token or --from-time"):
        check_supported("kafka", StartPoint("offsets", offsets={("t", 0): 1}))
    with pytest.raises(ReplayError, match="use --from-offsets or --from-time"):
        check_supported("lake", StartPoint("token", token={"_data": "82"}))


# -- bad input ------------------------------------------------------------------------------------
def test_a_file_that_is_not_duckdb_is_named_and_left_alone(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    settings.warehouse_path.write_text("these are my notes, not a database\n")
    with pytest.raises(WarehouseError, match=f"cannot open the warehouse {settings.warehouse_path}.*move it away"):
        open_warehouse(settings)
    with pytest.raises(WarehouseError):
        rebuild(settings)
    assert settings.warehouse_path.read_text() == "these are my notes, not a database\n"


def test_a_foreign_duckdb_file_is_refused_not_written(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    con = duckdb.connect(str(settings.warehouse_path))
    con.execute("CREATE TABLE orders (id INTEGER, total DOUBLE)")
    con.execute("INSERT INTO orders VALUES (1, 2.5)")
    con.close()
    append_silver(settings, [silver_row(0, 1, "insert", "created")])
    for action in (load, rebuild):
        with pytest.raises(WarehouseError, match="not this pipeline's warehouse.*tables orders"):
            action(settings)
    con = duckdb.connect(str(settings.warehouse_path))
    assert con.execute("SELECT * FROM orders").fetchall() == [(1, 2.5)]
    assert [r[0] for r in con.execute("SHOW TABLES").fetchall()] == ["orders"]
    con.close()


def test_a_development_warehouse_asks_for_a_rebuild_which_replaces_it(lake) -> None:  # noqa: ANN001
    con = duckdb.connect(str(lake.warehouse_path))  # what the builds before release 1 wrote: no format_version
    con.execute("DELETE FROM warehouse_meta WHERE key = 'format_version'")
    con.execute("INSERT INTO warehouse_meta VALUES ('schema_version', '5')")
    con.close()
    for attempt in (lambda: load(lake), lambda: query(lake, "SELECT 1")):
        with pytest.raises(WarehouseError, match="a warehouse of a development build .before release 1.; this "
                                                 f"release reads format v{WAREHOUSE_VERSION}. Make it again with "
                                                 "`lakehouse replay --into warehouse --from-beginning`"):
            attempt()
    rebuild(lake)
    assert query(lake, "SELECT value FROM warehouse_meta WHERE key = 'format_version'") == [(str(WAREHOUSE_VERSION),)]
    assert query(lake, "SELECT count(*) FROM orders") == [(2,)]
    assert not [p for p in lake.warehouse_path.parent.iterdir() if "rebuild" in p.name]


def test_a_warehouse_of_a_newer_format_is_refused_and_left_as_it_was(lake) -> None:  # noqa: ANN001
    con = duckdb.connect(str(lake.warehouse_path))
    con.execute("UPDATE warehouse_meta SET value = '7' WHERE key = 'format_version'")
    con.close()
    before = lake.warehouse_path.read_bytes()
    with pytest.raises(WarehouseError, match=f"format v7, newer than this release reads .v{WAREHOUSE_VERSION}."):
        load(lake)
    assert lake.warehouse_path.read_bytes() == before


def test_a_later_format_upgrades_an_older_file_in_place_once_and_readers_wait_for_it(
        lake, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The mechanism a later release uses: one step per version, run by the writer in the transaction
    that stamps the new version; readers refuse the file until then."""
    from lakehouse.contracts.formats import Format
    from warehouse import migrate
    from warehouse.errors import REBUILD

    calls = []
    before = query(lake, "SELECT * FROM orders ORDER BY doc_id")
    now, later = WAREHOUSE_VERSION, WAREHOUSE_VERSION + 1

    def to_later(file: migrate.Upgrading) -> None:
        calls.append(later)
        file.con.execute("CREATE TABLE upgraded AS SELECT 1 AS marker")

    monkeypatch.setattr(migrate, "WAREHOUSE_VERSION", later)
    monkeypatch.setattr(migrate, "WAREHOUSE_FORMAT", Format("a warehouse", later, REBUILD, {now: to_later}))
    with pytest.raises(WarehouseError, match=f"format v{now}; this release reads v{later}, and a writer such as "
                                             "`lakehouse load` upgrades it in place"):
        query(lake, "SELECT 1")
    load(lake)
    load(lake)
    assert calls == [later]
    assert query(lake, "SELECT value FROM warehouse_meta WHERE key = 'format_version'") == [(str(later),)]
    assert query(lake, "SELECT * FROM upgraded") == [(1,)]
    assert query(lake, "SELECT * FROM orders ORDER BY doc_id") == before


def test_a_release_1_warehouse_and_lake_are_read_and_upgraded_to_key_columns_named_by_the_spec(
        tmp_path: Path) -> None:
    """Release 1 kept every collection's Kafka key in a column `order_id` (customers.order_id held customer
    ids), in silver and in the warehouse. Release 2 reads such a lake as it is and carries such a warehouse
    forward in place: orders keep `order_id` (the spec's key), customers lose it (keyed by _id)."""
    settings = lake_settings(tmp_path).replace(collections=("orders", "customers"))
    old_schema = pa.schema([pa.field("order_id", pa.string()) if f.name == "key" else f for f in SCHEMA])
    release_1 = [{("order_id" if k == "key" else k): v for k, v in row.items()}
                 for row in (silver_row(0, 1, "insert", "created", "10.00"), _customer_row(1, "cust-1", "Ada"))]
    write_deltalake(str(settings.table_path(tables.SILVER)), pa.Table.from_pylist(release_1, schema=old_schema))
    load(settings)
    con = duckdb.connect(str(settings.warehouse_path))  # as release 1 left it
    for table in ("customers", "fact_customers_changes"):
        con.execute(f"ALTER TABLE {table} ADD COLUMN order_id VARCHAR")
        con.execute(f"UPDATE {table} SET order_id = doc_id")
    con.execute("UPDATE warehouse_meta SET value = '1' WHERE key = 'format_version'")
    con.close()
    with pytest.raises(WarehouseError, match="format v1; this release reads v2, and a writer such as `lakehouse "
                                             "load` upgrades it in place"):
        query(settings, "SELECT 1")
    require_matching_lake(settings)  # what run-all checks before it starts the load that upgrades the file

    # The streaming job of release 2 appends rows with `key` to the same silver (Delta adds the column).
    write_deltalake(str(settings.table_path(tables.SILVER)),
                    pa.Table.from_pylist([silver_row(2, 2, "insert", "paid", "20.00")], schema=SCHEMA),
                    mode="append", schema_mode="merge")
    assert load(settings).current == {"orders": 2, "customers": 1}
    assert query(settings, "SELECT value FROM warehouse_meta WHERE key = 'format_version'") == [("2",)]
    assert query(settings, "SELECT doc_id, order_id FROM orders ORDER BY doc_id") == [("1", "o1"), ("2", "o2")]
    assert query(settings, "SELECT doc_id, order_id FROM orders_history ORDER BY doc_id") == [("1", "o1"), ("2", "o2")]
    columns = {c for (c,) in query(settings, "SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name IN ('customers', 'fact_customers_changes')")}
    assert "order_id" not in columns and "key" not in columns
    assert query(settings, "SELECT name FROM customers") == [("Ada",)]


def test_a_missing_lake_is_an_error_naming_the_path(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    with pytest.raises(LakeMissing, match=f"no lake at {settings.lake_path}"):
        load(settings)
    assert not settings.warehouse_path.exists()


def test_a_silver_table_without_the_columns_the_warehouse_needs(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    row = silver_row(0, 1, "insert", "created")
    old = pa.Table.from_pylist([{k: v for k, v in row.items() if k not in ("amount", "resume_token")}])
    write_deltalake(str(settings.table_path(tables.SILVER)), old)
    with pytest.raises(WarehouseError, match="lacks column.*resume_token.*replay --into lake"):
        load(settings)


def test_a_load_that_fails_midway_leaves_the_previous_state(lake) -> None:  # noqa: ANN001
    before = query(lake, "SELECT * FROM orders ORDER BY doc_id")
    bad = silver_row(9, 4, "insert", "created") | {"cluster_time_s": None}  # NOT NULL in the warehouse
    write_deltalake(str(lake.table_path(tables.SILVER)),
                    pa.Table.from_pylist([silver_row(8, 5, "insert", "created"), bad], schema=SCHEMA),
                    mode="append")
    with pytest.raises(WarehouseError, match="nothing was written"):
        load(lake)
    assert query(lake, "SELECT * FROM orders ORDER BY doc_id") == before
    assert query(lake, "SELECT count(*) FROM fact_order_changes WHERE doc_id = '5'") == [(0,)]


def test_history_documents_are_json(lake) -> None:  # noqa: ANN001
    docs = query(lake, "SELECT document FROM orders_history WHERE NOT is_tombstone")
    assert all(json.loads(d)["order_id"] for (d,) in docs)


def test_reading_a_warehouse_that_is_not_there_says_how_to_make_one(tmp_path: Path) -> None:
    from warehouse.query import sql_reader

    expected = r"no warehouse at .*missing\.duckdb \(WAREHOUSE_PATH\) yet: run `make run-all`"
    with pytest.raises(WarehouseError, match=expected):
        sql_reader(tmp_path / "missing.duckdb")("SELECT 1")
    assert not (tmp_path / "missing.duckdb").exists()


def test_a_warehouse_replay_from_offsets_nothing_came_from_is_refused(lake) -> None:  # noqa: ANN001
    with pytest.raises(ReplayError, match=r"nope\[0\], t\[1\], which neither the warehouse nor the lake"):
        replay(lake, "warehouse", StartPoint("offsets", offsets={("nope", 0): 0, ("t", 1): 0, ("t", 0): 0}))


def _customer_row(seq: int, doc: str, name: str) -> dict:
    row = silver_row(seq, 0, "insert", None)
    document = json.dumps({"_id": doc, "name": name, "score": seq})
    return {**row, "collection": "customers", "doc_id": json.dumps(doc), "key": json.dumps(doc),
            "full_document": document, "customer_id": None, "name": name, "score": seq, "kafka_offset": 100 + seq}


def test_a_collection_added_to_the_spec_later_loads_from_the_whole_lake(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path).replace(collections=("orders",))
    append_silver(settings, [silver_row(0, 1, "insert", "created", "10.00"), _customer_row(1, "cust-1", "Ada")])
    load(settings)
    append_silver(settings, [_customer_row(2, "cust-2", "Bob")])
    load(settings)
    both = settings.replace(collections=("orders", "customers"))
    assert load(both).current == {"orders": 1, "customers": 2}
    tombstone = {**_customer_row(3, "cust-1", "Ada"), "op": "delete", "full_document": None, "change_id": "gone"}
    append_silver(both, [tombstone])
    assert load(both).current == {"orders": 1, "customers": 1}
    assert query(both, "SELECT count(*) FROM fact_order_changes") == [(1,)]  # each collection its own changes


def test_names_from_the_spec_that_are_sql_keywords_work(tmp_path: Path) -> None:
    spec = tmp_path / "collections.toml"
    spec.write_text('[orders]\nkey = "order_id"\nmoney = true\n[orders.columns]\ncustomer_id = "string"\n'
                    'status = "string"\n[customers]\ntable = "select"\nchanges = "group"\n'
                    '[customers.columns]\norder = { field = "name", type = "string" }\n')
    settings = Settings.from_env(lake_path=tmp_path / "lake", warehouse_path=tmp_path / "wh.duckdb",
                                 state_dir=tmp_path / "state", collections_spec=spec, collections="orders,customers")
    row = {**_customer_row(1, "cust-1", "Ada"), "order": "Ada"}
    write_deltalake(str(settings.table_path(tables.SILVER)),
                    pa.Table.from_pylist([silver_row(0, 1, "insert", "created", "10.00"), row],
                                         schema=tables.silver_schema(settings)), mode="append")
    assert load(settings).current == {"orders": 1, "customers": 1}
    assert query(settings, 'SELECT "order" FROM "select"') == [("Ada",)]
    assert query(settings, 'SELECT count(*) FROM "select_history" WHERE is_current') == [(1,)]


def test_a_column_added_to_the_spec_is_added_to_the_tables_on_the_next_load(tmp_path: Path) -> None:
    spec = tmp_path / "collections.toml"
    spec.write_text('[orders]\nkey = "order_id"\nmoney = true\n[orders.columns]\ncustomer_id = "string"\n'
                    'status = "string"\n')
    settings = Settings.from_env(lake_path=tmp_path / "lake", warehouse_path=tmp_path / "wh.duckdb",
                                 state_dir=tmp_path / "state", collections_spec=spec)
    append_silver(settings, [silver_row(0, 1, "insert", "created", "10.00")])
    load(settings)
    spec.write_text(spec.read_text() + 'note = "string"\n')
    import os

    os.utime(spec, ns=(1, spec.stat().st_mtime_ns + 1_000_000))
    edited = Settings.from_env(**{k: getattr(settings, k) for k in ("lake_path", "warehouse_path", "state_dir")},
                               collections_spec=spec)
    load(edited)
    assert query(edited, "SELECT note FROM orders") == [(None,)]
    assert query(edited, "SELECT count(*) FROM orders_history WHERE note IS NULL") == [(1,)]


def test_each_load_records_when_its_transaction_began_and_committed(tmp_path: Path) -> None:
    from warehouse.lake import silver_version

    settings = lake_settings(tmp_path)
    assert silver_version(settings) is None  # no lake yet: nothing to load, and no warehouse opened
    append_silver(settings, [silver_row(0, 1, "insert", "created", "10.00")])
    load(settings)
    assert silver_version(settings) == 0
    (record,) = [json.loads(line) for line in settings.load_metrics.read_text().splitlines()]
    assert (record["silver_version"], record["rows_read"], record["new_changes"]) == (0, 1, 1)
    assert record["committed_us"] >= record["began_us"]
    # loaded_at of the changes it inserted is the start of its transaction: a change's load is found
    assert query(settings, "SELECT epoch_us(loaded_at) FROM fact_order_changes") == [(record["began_us"],)]


def test_a_lake_of_development_envelope_v1_events_is_refused_with_how_to_make_it_again(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path)
    append_silver(settings, [silver_row(0, 1, "insert", "created", "10.00") | {"schema_version": 1}])
    with pytest.raises(WarehouseError, match="holds 1 change events of envelope v1, from a development build.*"
                                             "lakehouse replay --into kafka --from-beginning"):
        load(settings)
    assert query(settings, "SELECT count(*) FROM fact_order_changes") == [(0,)]
