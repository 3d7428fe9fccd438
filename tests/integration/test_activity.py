"""Enrichment, revenue by category, inventory alerts and customer sessions against real MongoDB, Kafka and
Spark, over two runs of the job and a replay of each stateful query's last batch (as after a kill between
its write and its commit): every alert once, none lost, and the same rows in the warehouse."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from kafka import KafkaProducer

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from streaming import inventory, sessions
from streaming.aggregates import revenue_checkpoint
from streaming.inventory import crossings
from tests.helpers import drain, lake_rows, stream_lake
from warehouse.connection import connect
from warehouse.loader import load

SOURCE_ORDER = tables.SOURCE_ORDER


def run_derived(spark: object, settings: Settings) -> None:
    from streaming.job import start_derived

    for query in start_derived(spark, settings, available_now=True):  # type: ignore[arg-type]
        query.awaitTermination(600)
        assert query.exception() is None, query.exception()


def forget_last_commit(checkpoint: Path) -> None:
    """As if the query was killed after writing its last batch and before committing it."""
    last = max((checkpoint / "commits").glob("[0-9]*"), key=lambda p: int(p.name))
    last.unlink()
    (last.parent / f".{last.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum of it


def test_enrichment_alerts_and_sessions_over_two_runs_and_a_replayed_batch(spark: object, settings: Settings) -> None:
    settings = settings.replace(watermark_delay="1 hour", session_gap="10 seconds")
    db = connect_mongo(settings)[settings.mongo_db]
    drain(settings)
    db["customers"].insert_one({"_id": "cust-late", "name": "late", "segment": "vip", "country": "NL"})
    generator = OrderGenerator.for_database(db, settings.collections, seed=3)
    generator.run(300)
    products = db["products"]
    products.insert_one({"_id": "sku-alert", "name": "Alarm", "category": "toys", "stock": 30})
    for stock in (25, 18, 15):  # low at 18
        products.update_one({"_id": "sku-alert"}, {"$set": {"stock": stock}})
    db["orders"].insert_one({"order_id": "ord-enriched", "customer_id": "cust-late", "status": "created",
                             "amount": "12.00", "currency": "GBP",
                             "items": [{"sku": "sku-alert", "qty": 1}, {"sku": "sku-nowhere", "qty": 2}]})
    drain(settings)
    stream_lake(spark, settings)
    run_derived(spark, settings)

    # Second run: the state (levels, sessions in progress, reference attributes) carries over.
    for stock in (4, 0, 0, 60):  # critical, out of stock, (no change), restocked
        products.update_one({"_id": "sku-alert"}, {"$set": {"stock": stock}})
    generator.run(200)
    drain(settings)
    stream_lake(spark, settings)
    # An order far in the future moves the watermark past every real session (it stays open itself).
    now = int(time.time())
    tick = {"schema_version": 2, "op": "insert", "db": settings.mongo_db, "collection": "orders", "txn_op_index": 0,
            "cluster_time_inc": 1, "change_id": "tick", "doc_id": "tick", "cluster_time_s": now + 3 * 3600,
            "full_document": json.dumps({"order_id": "tick", "customer_id": "tick", "status": "created",
                                         "amount": "1.00", "currency": "USD", "items": []})}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    producer.send(settings.topic_for("orders"), key=b"tick", value=json.dumps(tick).encode())
    producer.flush()
    producer.close()
    stream_lake(spark, settings)
    run_derived(spark, settings)
    before = {name: len(lake_rows(settings, name)) for name in
              (tables.INVENTORY_ALERTS, tables.CUSTOMER_SESSIONS, tables.REVENUE_BY_CATEGORY)}

    # A replay of each stateful query's last batch writes nothing twice.
    for checkpoint in (inventory.checkpoint(settings), sessions.checkpoint(settings),
                       *(revenue_checkpoint(settings, g) for g in tables.CATEGORY_WINDOWS)):
        forget_last_commit(checkpoint)
    run_derived(spark, settings)
    assert {name: len(lake_rows(settings, name)) for name in before} == before

    silver = lake_rows(settings, tables.SILVER)

    # Inventory: exactly the crossings of each product's stock history in source order, each once.
    alerts = lake_rows(settings, tables.INVENTORY_ALERTS)
    mine = sorted((a for a in alerts if a["product_id"] == "sku-alert"), key=lambda a: a["event_time"])
    assert [(a["level"], a["stock"], a["threshold"], a["previous_level"]) for a in mine] == [
        ("low", 18, 20, "ok"), ("critical", 4, 5, "low"), ("out_of_stock", 0, 0, "critical"),
        ("restocked", 60, 20, "out_of_stock")]
    assert all(a["name"] == "Alarm" for a in mine)
    history: dict[str, list[dict]] = defaultdict(list)
    for row in silver:
        if row["collection"] == "products" and row["op"] != "delete" and row["stock"] is not None:
            history[row["doc_id"]].append(row)
    expected = sorted((a["product_id"], a["change_id"], a["level"]) for changes in history.values()
                      for a in crossings(changes, None, settings.inventory_low, settings.inventory_critical)[0])
    assert sorted((a["product_id"], a["change_id"], a["level"]) for a in alerts) == expected
    assert len(expected) > 4  # the generator's orders took other products below the thresholds too

    # Enrichment: the order's lines carry the customer's and the products' attributes.
    lines = [r for r in lake_rows(settings, tables.ORDER_LINES) if r["order_id"] == "ord-enriched"]
    assert sorted((r["sku"], r["product_category"], r["customer_segment"], r["line_revenue"]) for r in lines) == [
        ("sku-alert", "toys", "vip", Decimal("4.00")), ("sku-nowhere", None, "vip", Decimal("8.00"))]

    # Revenue by category: every order placed (but the open tick's window), in both granularities.
    placed = [r for r in silver if r["collection"] == "orders" and r["op"] == "insert" and r["change_id"] != "tick"]
    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for r in placed:
        if r["amount"] is not None:
            by_currency[r["amount_currency"]] += r["amount"]
    revenue = lake_rows(settings, tables.REVENUE_BY_CATEGORY)
    for granularity in tables.CATEGORY_WINDOWS:
        rows = [r for r in revenue if r["granularity"] == granularity]
        got: dict[str, Decimal] = defaultdict(Decimal)
        for r in rows:
            got[r["currency"]] += r["revenue"] or Decimal(0)
        assert {c: v for c, v in got.items() if v} == {c: v for c, v in by_currency.items() if v}, granularity
        assert {"toys", "(unknown)"} <= {r["category"] for r in rows}
        assert sum(r["items"] for r in rows) >= len(placed)

    # Sessions: every change of every customer in exactly one closed session; none span a gap.
    found = lake_rows(settings, tables.CUSTOMER_SESSIONS)
    activity = [r for r in silver if r["collection"] == "orders" and r["op"] in sessions.ACTIVITY
                and r["customer_id"] not in (None, "tick")]
    assert sum(s["changes"] for s in found) == len(activity)
    assert sum(s["orders_placed"] for s in found) == sum(1 for r in activity if r["op"] == "insert")
    assert sum((s["amount_spent"] or Decimal(0)) for s in found) == sum(
        (r["amount"] or Decimal(0)) for r in activity if r["op"] == "insert")
    gap = timedelta(seconds=10)
    for customer in {s["customer_id"] for s in found}:
        mine_s = sorted((s for s in found if s["customer_id"] == customer), key=lambda s: s["session_start"])
        assert all(s["session_end"] == s["last_activity"] + gap for s in mine_s)
        assert all(a["session_end"] <= b["session_start"] for a, b in zip(mine_s, mine_s[1:], strict=False))
    assert "tick" not in {s["customer_id"] for s in found}  # its session is still open
    assert len({s["session_start"].replace(microsecond=0) for s in found}) > 1  # the two runs are apart

    # The warehouse reads the same rows.
    load(settings)
    con = connect(settings.warehouse_path, read_only=True)
    try:
        for name in (tables.INVENTORY_ALERTS, tables.CUSTOMER_SESSIONS, tables.REVENUE_BY_CATEGORY,
                     tables.ORDER_LINES):
            assert con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0] == len(lake_rows(settings, name)), name
    finally:
        con.close()
