"""Hostile but legal MongoDB data against the real servers: every BSON type as _id, order_id and amount,
records near and over Kafka's limit. Each document ends in the warehouse as MongoDB holds it, or in the
dead-letter topic with its reason, and reconcile accounts for every one."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from bson import Binary, Decimal128, Int64, ObjectId
from bson.son import SON
from click.testing import CliRunner

from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.app.reconcile import reconcile
from lakehouse.contracts import events, tables
from lakehouse.core.config import Settings
from tests.helpers import drain, lake_rows, read_topic, stream_lake
from warehouse.connection import connect
from warehouse.loader import load

OID = ObjectId("6b038060dfb53f1723db4377")
IDS = [1001, "1001", OID, str(OID), SON([("a", 1), ("b", 2)]), SON([("b", 2), ("a", 1)]), '{"a": 1, "b": 2}',
       None, "null", "*", Int64(7), 2.5, Decimal128("3.25"), True, dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
       Binary(b"\x00\x01"), "ünï ✓", "$dollar", "with.dot"]
AMOUNTS = {  # amount value -> (amount, amount_error start) silver must hold
    "decimal": (Decimal128("12.50"), Decimal("12.50"), None),
    "decimal-nan": (Decimal128("NaN"), None, "amount is not a finite number"),
    "big-float": (12345678.9, Decimal("12345678.90"), None),
    "exponent": (1e7, Decimal("10000000.00"), None),
    "small": (0.0005, Decimal("0.00"), None),
    "int64": (Int64(1200), Decimal("1200.00"), None),
}


def silver(settings: Settings) -> list[dict]:
    return lake_rows(settings, tables.SILVER)


def test_every_document_reaches_the_warehouse_as_mongodb_holds_it_or_the_dead_letter_topic(
        spark: object, settings: Settings) -> None:
    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    drain(settings)  # the stream is open: what follows is captured change by change
    for n, _id in enumerate(IDS):
        orders.insert_one({"_id": _id, "order_id": f"id-{n}", "status": "created", "amount": "5.00",
                           "currency": "USD"})
    order_ids = [17, Int64(18), {"nested": 1}, [1, 2], None, OID, "x" * 300_000]
    for n, order_id in enumerate(order_ids):
        orders.insert_one({"_id": f"order-id-{n}", "order_id": order_id, "status": "paid", "amount": 1})
    for name, (amount, _, _) in AMOUNTS.items():
        orders.insert_one({"_id": f"amount-{name}", "order_id": name, "status": "paid", "amount": amount,
                           "currency": "USD"})
    orders.insert_one({"_id": "currency-object", "amount": 3, "currency": {"code": "USD"}})
    orders.insert_one({"_id": "near-limit", "order_id": "big", "pad": "x" * 1_047_600})  # value fits, record not
    orders.insert_one({"_id": "fits", "order_id": "fits", "pad": "y" * 900_000})
    orders.delete_one({"_id": 1001})  # must not touch the live "1001"
    orders.update_one({"_id": "1001"}, {"$set": {"status": "paid"}})

    drain(settings)
    stream_lake(spark, settings)
    load(settings)

    result = reconcile(settings, "orders")
    assert result.ok, (result.line(), result.examples())
    assert result.dead_lettered == [events.doc_id_text({"_id": "near-limit"})]
    assert result.source == len(IDS) - 1 + len(order_ids) + len(AMOUNTS) + 1 + 2

    con = connect(settings.warehouse_path, read_only=True)
    try:
        identities = {r[0] for r in con.execute("SELECT doc_id FROM orders").fetchall()}
    finally:
        con.close()
    assert events.doc_id_text({"_id": "1001"}) in identities and events.doc_id_text({"_id": 1001}) not in identities
    assert events.doc_id_text({"_id": "*"}) in identities  # a document, not the whole-collection marker

    dead = read_topic(settings, settings.dead_letter_topic)
    assert len(dead) == 1 and dead[0]["doc_id"] == events.doc_id_text({"_id": "near-limit"})
    assert "exceeds max_request_size" in dead[0]["reason"] and dead[0]["size"] > 1_048_576
    assert dead[0]["collection"] == "orders" and dead[0]["change_id"]

    rows = {r["doc_id"]: r for r in silver(settings) if r["op"] == "insert"}
    for name, (_, amount, error) in AMOUNTS.items():
        row = rows[events.doc_id_text({"_id": f"amount-{name}"})]
        assert row["amount"] == amount, (name, row["amount_raw"], row["amount_error"])
        assert (row["amount_error"] or "").startswith(error or ""), (name, row["amount_error"])
    currency = rows[events.doc_id_text({"_id": "currency-object"})]
    assert currency["amount"] is None and currency["amount_error"].startswith("currency is not a currency code")
    # A huge order_id is a bounded Kafka key; the event's `key` keeps the original.
    huge = rows[events.doc_id_text({"_id": "order-id-6"})]
    assert huge["key"] == "x" * 300_000

    # Updated past Kafka's record size: the change is dead-lettered and the warehouse keeps the version
    # before. Reconcile accounts for it as dead-lettered, not as a difference, and a repair tries nothing:
    # the command succeeds and publishes no event (a loader's periodic round would not fail on it forever).
    fits = events.doc_id_text({"_id": "fits"})
    orders.update_one({"_id": "fits"}, {"$set": {"pad": "z" * 1_100_000}})
    drain(settings)
    result = reconcile(settings, "orders")
    assert result.ok and fits in result.dead_lettered, (result.line(), result.examples())
    published = end_offsets(settings, settings.topics)
    repaired = CliRunner().invoke(cli, ["reconcile", "--repair"], env=settings.to_env())
    assert repaired.exit_code == 0 and "dead-lettered, not loaded: 2" in repaired.output, repaired.output
    assert end_offsets(settings, settings.topics) == published
