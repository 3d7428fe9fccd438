"""The enrichment's share-out rules and the inventory alerts' crossings without Spark; the enrichment's join in a
local Spark."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from streaming.enrichment import order_items, order_lines, readable_id, share_out
from streaming.inventory import crossings

pytestmark = pytest.mark.unit
LOW, CRITICAL = 20, 5


def change(n: int, stock: int, **extra: object) -> dict[str, object]:
    return {"doc_id": '"sku-1"', "name": "p", "stock": stock, "event_time": n, "change_id": f"c{n}",
            "cluster_time_s": n, "cluster_time_inc": 0, "txn_op_index": 0, **extra}


def levels(alerts: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(a["level"], a["stock"]) for a in alerts]


def test_one_alert_per_crossing_not_per_change() -> None:
    stocks = [50, 30, 20, 18, 12, 5, 4, 1, 0, 0, 3, 90, 80]
    alerts, state = crossings([change(n, s) for n, s in enumerate(stocks)], None, LOW, CRITICAL)
    assert levels(alerts) == [("low", 20), ("critical", 5), ("out_of_stock", 0), ("critical", 3), ("restocked", 90)]
    assert [a["previous_level"] for a in alerts] == ["ok", "low", "critical", "out_of_stock", "critical"]
    assert [a["threshold"] for a in alerts] == [20, 5, 0, 5, 20]
    assert state == ("ok", 12, 0, 0)


def test_batches_duplicates_and_replays_give_the_alerts_of_the_changes_in_source_order() -> None:
    stocks = [50, 19, 4, 0, 60, 10, 0, 100]
    changes = [change(n, s) for n, s in enumerate(stocks)]
    whole, _ = crossings(changes, None, LOW, CRITICAL)
    rng = random.Random(5)
    for _ in range(100):
        cut = rng.randrange(len(changes) + 1)
        # delivered in order, split anywhere, each batch shuffled and with duplicates: the same alerts
        first, second = changes[:cut] + changes[:cut][:2], changes[cut:] + changes[cut:][-2:]
        rng.shuffle(first)
        rng.shuffle(second)
        alerts, state = crossings(first, None, LOW, CRITICAL)
        more, _ = crossings(second, state, LOW, CRITICAL)
        assert alerts + more == whole
        # a change older than what the state holds (late) is not taken: the alerts follow what came in order
        late, _ = crossings(changes[:cut][:1], state, LOW, CRITICAL)
        assert late == []
    # replaying a batch against the state it produced raises nothing new
    _, state = crossings(changes, None, LOW, CRITICAL)
    assert crossings(changes, state, LOW, CRITICAL)[0] == []


def test_a_product_first_seen_out_of_stock_raises_that_alert() -> None:
    alerts, _ = crossings([change(1, 0)], None, LOW, CRITICAL)
    assert levels(alerts) == [("out_of_stock", 0)]


@pytest.mark.parametrize(("amount", "quantities"), [
    (Decimal("10.00"), [1, 1, 1]), (Decimal("0.01"), [2, 1]), (Decimal("-5.55"), [3, 4]),
    (Decimal("1234.56"), [0, 0]), (Decimal("99.99"), [7]),
])
def test_shared_out_lines_add_up_to_the_amount(amount: Decimal, quantities: list[int]) -> None:
    lines = share_out(amount, quantities)
    assert sum(lines) == amount  # type: ignore[arg-type]
    assert all(line == line.quantize(Decimal("0.01")) for line in lines)  # type: ignore[union-attr]
    assert share_out(None, quantities) == [None] * len(quantities)


def test_items_are_read_from_any_document_shape() -> None:
    assert order_items({"items": [{"sku": "a", "qty": 2}, {"sku": 7}]}) == [("a", 2), (7, 1)]
    assert order_items({"items": [{"sku": "a", "qty": {"$numberLong": "3"}}]}) == [("a", 3)]
    assert order_items({"items": "not a list"}) == [(None, 1)]
    assert order_items({}) == [(None, 1)]
    assert order_items({"items": [{"sku": "a", "qty": "many"}, "junk"]}) == [("a", 1), (None, 1)]
    assert [readable_id(v) for v in ("a", 7, {"$oid": "65a"}, None)] == ["a", "7", '{"$oid": "65a"}', None]


def silver_rows(rows: list[dict[str, object]]) -> pa.Table:
    base = {"collection": None, "op": "insert", "doc_id": None, "cluster_time_s": 0, "cluster_time_inc": 0,
            "txn_op_index": 0, "change_id": None, "key": None, "event_time": datetime(2026, 1, 1, tzinfo=UTC),
            "event_date": date(2026, 1, 1), "customer_id": None, "amount": None, "amount_currency": None,
            "full_document": None, "segment": None, "country": None, "name": None, "category": None,
            "batch_id": 0, "ingested_at": datetime(2026, 1, 1, tzinfo=UTC)}
    return pa.Table.from_pylist([{**base, **r} for r in rows], pa.schema([
        ("collection", pa.string()), ("op", pa.string()), ("doc_id", pa.string()), ("cluster_time_s", pa.int64()),
        ("cluster_time_inc", pa.int64()), ("txn_op_index", pa.int64()), ("change_id", pa.string()),
        ("key", pa.string()), ("event_time", pa.timestamp("us", tz="UTC")), ("event_date", pa.date32()),
        ("customer_id", pa.string()), ("amount", pa.decimal128(18, 2)), ("amount_currency", pa.string()),
        ("full_document", pa.string()), ("segment", pa.string()), ("country", pa.string()), ("name", pa.string()),
        ("category", pa.string()), ("batch_id", pa.int64()), ("ingested_at", pa.timestamp("us", tz="UTC"))]))


@pytest.mark.spark
def test_orders_are_joined_with_the_newest_attributes_in_source_order(spark_local: object) -> None:
    from pyspark.sql import functions as F

    order = {"collection": "orders", "change_id": "o1", "key": "ord-1", "customer_id": "c1",
             "amount": Decimal("10.00"), "amount_currency": "EUR", "cluster_time_s": 5,
             "full_document": json.dumps({"customer_id": "c1", "items": [{"sku": "s1", "qty": 1}, {"sku": 7, "qty": 1},
                                                    {"sku": "s1", "qty": 2}, {"sku": "gone", "qty": 1}]})}
    batch = silver_rows([
        {"collection": "customers", "doc_id": '"c1"', "segment": "vip", "country": "FR", "cluster_time_s": 3},
        {"collection": "customers", "doc_id": '"c1"', "segment": "old", "country": "XX", "cluster_time_s": 1},  # late
        {"collection": "products", "doc_id": '"s1"', "name": "Pen", "category": "office", "cluster_time_s": 2},
        {"collection": "products", "doc_id": "7", "name": "Pan", "category": "kitchen", "cluster_time_s": 2},
        order,
        {**order, "change_id": "u1", "op": "update"},  # not a placement
    ])
    rows = spark_local.createDataFrame(batch).withColumn("_row", F.monotonically_increasing_id())  # type: ignore[attr-defined]

    def lines_of(data: object) -> list[dict[str, object]]:
        found = order_lines(data, lambda: None).toArrow()  # type: ignore[arg-type]
        return sorted(found.to_pylist(), key=lambda r: (r["change_id"], r["line_revenue"], r["sku"] or ""))

    lines = lines_of(rows)
    # The lines in any order (the table has no item position); first_in_category is the first s1 line's.
    assert sorted((r["sku"], r["product_category"], r["qty"], r["line_revenue"], r["first_in_category"])
                  for r in lines) == sorted([
        ("s1", "office", 1, Decimal("2.00"), True), ("7", "kitchen", 1, Decimal("2.00"), True),
        ("s1", "office", 2, Decimal("4.00"), False), ("gone", None, 1, Decimal("2.00"), True)])
    assert {(r["customer_segment"], r["customer_country"], r["currency"]) for r in lines} == {("vip", "FR", "EUR")}
    # Same batch again (a replay): the same lines.
    assert lines_of(rows) == lines_of(rows)


@pytest.mark.spark
def test_an_order_is_parsed_once_however_many_items_it_has(spark_local: object) -> None:
    """An expression beside the explode runs per item: the document's parse must happen below it, once per
    order (an order of 100,000 items took 20 minutes when each item parsed it again)."""
    from pyspark.sql import functions as F

    items = [{"sku": f"s{i}", "qty": 1} for i in range(2000)]
    order = {"collection": "orders", "change_id": "big", "key": "ord-big", "customer_id": "c1",
             "amount": Decimal("2000.00"), "amount_currency": "EUR",
             "full_document": json.dumps({"customer_id": "c1", "items": items})}
    rows = spark_local.createDataFrame(silver_rows([order])).withColumn(  # type: ignore[attr-defined]
        "_row", F.monotonically_increasing_id())
    lines = order_lines(rows, lambda: None)
    plan = lines._jdf.queryExecution().optimizedPlan().toString()  # type: ignore[attr-defined]
    above_explode = plan[:plan.index("Generate")]
    assert "parse_json" not in above_explode, plan
    found = lines.toArrow().to_pylist()
    assert len(found) == 2000 and sum(r["line_revenue"] for r in found) == Decimal("2000.00")
