"""Every captured collection is a warehouse table: customers and products (collections.toml) end to end,
with their typed columns, their history, and reconcile and repair per collection."""

from __future__ import annotations

import json

import duckdb
from click.testing import CliRunner

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.app.reconcile import reconcile
from lakehouse.contracts.events import doc_id_text
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.helpers import drain, stream_lake, warehouse_rows
from warehouse.loader import load


def test_customers_and_products_are_tables_with_their_columns_history_and_reconcile(
        spark: object, settings: Settings) -> None:
    assert settings.collections == ("orders", "customers", "products")
    db = connect_mongo(settings)[settings.mongo_db]
    generator = OrderGenerator.for_database(db, settings.collections, seed=61)
    generator.run(400)
    drain(settings)  # the snapshot of what is there; the changes below stream
    db["customers"].insert_one({"_id": 7, "name": "Integer Id", "score": "not a number"})  # converts to null
    db["customers"].update_one({"_id": 7}, {"$set": {"name": "Renamed"}})
    generator.run(300)  # inserts, updates and deletes of all three, streamed
    drain(settings)
    stream_lake(spark, settings)
    load(settings)

    for name in settings.collections:
        result = reconcile(settings, name)
        assert result.ok, result.line()
        # Every document was equal on its digest alone (snapshot and streamed changes alike): the producer's
        # digest of what it decoded is MongoDB's raw bytes', carried through Kafka, Spark and the loader.
        assert result.compared_in_full == 0, (name, result.compared_in_full)
    want = {doc_id_text({"_id": d["_id"]}): (d.get("name"), d.get("score")) for d in db["customers"].find()}
    got = {doc_id: (name, score)
           for doc_id, name, score in warehouse_rows(settings, "SELECT doc_id, name, score FROM customers")}
    assert got == {k: (n, s if isinstance(s, int) else None) for k, (n, s) in want.items()}
    history = warehouse_rows(settings, "SELECT name, is_current FROM customers_history WHERE doc_id = '7' "
                                       "ORDER BY cluster_time_s, cluster_time_inc")
    assert history == [("Integer Id", False), ("Renamed", True)]
    assert warehouse_rows(settings, "SELECT count(*) FROM fact_order_changes WHERE collection <> 'orders'") == [(0,)]

    # The customers table drifts; reconcile --collection customers finds and repairs only that.
    con = duckdb.connect(str(settings.warehouse_path))
    con.execute("DELETE FROM customers WHERE doc_id = '7'")
    con.close()
    result = CliRunner().invoke(cli, ["reconcile", "--collection", "customers", "--repair"], env=settings.to_env())
    assert "reconciled: collection=customers" in result.output and "missing=1 extra=0" in result.output, result.output
    assert "published 1 repair events to " + settings.topic_for("customers") in result.output, result.output
    assert result.exit_code == 0 and "collection=orders" not in result.output, result.output
    stream_lake(spark, settings)
    load(settings)
    result = CliRunner().invoke(cli, ["reconcile"], env=settings.to_env())
    lines = result.output.strip().splitlines()
    assert [line.split()[1] for line in lines[-4:-1]] == ["collection=orders", "collection=customers",
                                                          "collection=products"], result.output
    assert lines[-1].startswith("reconciled: source=") and lines[-1].endswith("missing=0 extra=0 mismatched=0")
    state = json.loads(settings.reconcile_state.read_text())
    assert [c["collection"] for c in state["collections"]] == list(settings.collections)


def test_a_collection_captured_later_is_copied_first_then_streamed(settings: Settings) -> None:
    """A collection added to collections.toml (or COLLECTIONS) after the producer has a token: the
    producer copies it once, as of its next start, then streams its changes; the others just resume."""
    from tests.helpers import mongo_state, read_topic, replay

    db = connect_mongo(settings)[settings.mongo_db]
    db["customers"].insert_many([{"_id": f"c{n}", "name": f"customer {n}"} for n in range(20)])
    only_orders = settings.replace(collections=("orders",))
    OrderGenerator(db["orders"], seed=3).run(30)
    drain(only_orders)
    assert read_topic(settings, settings.topic_for("customers")) == []
    db["customers"].update_one({"_id": "c0"}, {"$set": {"name": "renamed before capture"}})
    orders_before = len(read_topic(settings, settings.topic_for("orders")))

    listener = drain(settings)  # now all three
    assert listener.stats.snapshots == 20
    db["customers"].delete_one({"_id": "c1"})
    drain(settings)
    customers = read_topic(settings, settings.topic_for("customers"))
    assert replay(customers) == mongo_state(settings, "customers")
    assert len(read_topic(settings, settings.topic_for("orders"))) == orders_before  # orders were not copied again
    again = drain(settings)
    assert again.stats.snapshots == 0
