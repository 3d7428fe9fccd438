"""Stream-table join: each order placed, line by line, with its customer's and its products' attributes as
silver holds them when the lines are written (the newest version of each document in source order).

It runs off the lake query's path (streaming/lake_copies.py), over silver's Delta stream, as Spark joins on
the executors: the reference state is silver as it stands then, so an order sees a customer created
earlier in the same batch. A customer or product that has not arrived yet leaves its attributes null
(the quality rules flag the reference, and the warehouse's quality_open_references re-checks it); the
line is not held back.

The per-document helpers below (order_items, share_out, readable_id) state the same rules in Python, for
the tests and for readers outside Spark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse.contracts import tables
from lakehouse.contracts.events import DOCUMENT_OPERATIONS, identity_of
from lakehouse.core.collections import CUSTOMERS, ORDERS, PRODUCTS
from streaming.amounts import CENT
from streaming.quality import json_key, shown_id

log = logging.getLogger(__name__)

# line column -> attribute of the referenced document (a silver column the collections spec lifts)
CUSTOMER_ATTRIBUTES = {"customer_segment": "segment", "customer_country": "country"}
PRODUCT_ATTRIBUTES = {"product_name": "name", "product_category": "category"}
ORDER = tables.SOURCE_ORDER
LINE_COLUMNS = [name for name, _ in tables.ORDER_LINES_COLUMNS]


def _newest_attributes(rows: DataFrame, collection: str, attributes: dict[str, str], prefix: str) -> DataFrame:
    """Per document of `collection` (by its id's JSON key): the attributes of its newest version."""
    present = {line: attribute for line, attribute in attributes.items() if attribute in rows.columns}
    newest = Window.partitionBy("_key").orderBy(*(F.col(c).desc() for c in ORDER))
    return (rows.where((F.col("collection") == collection) & F.col("op").isin(*DOCUMENT_OPERATIONS))
            .withColumn("_key", json_key(F.col("doc_id")))
            .withColumn("_n", F.row_number().over(newest)).where("_n = 1")
            .select(F.col("_key").alias(f"{prefix}_key"),
                    *(F.col(attribute).alias(line) for line, attribute in present.items()),
                    *(F.lit(None).cast("string").alias(line) for line in attributes if line not in present)))


def _items(parsed: Column) -> Column:
    """(sku as JSON text, quantity) per item of a parsed order document, in order; one item of no product
    when there are none."""
    items = F.try_variant_get(parsed, "$.items", "array<variant>")

    def item(v: Column) -> Column:
        qty = F.try_variant_get(v, "$.qty", "variant")
        wrapped = F.coalesce(*(F.try_variant_get(qty, f"$['{w}']", "string")
                               for w in ("$numberInt", "$numberLong", "$numberDouble", "$numberDecimal")))
        number = F.coalesce(F.try_variant_get(qty, "$", "bigint"), wrapped.try_cast("double").try_cast("bigint"))
        sku = F.try_variant_get(v, "$.sku", "variant")
        is_object = F.schema_of_variant(v).startswith("OBJECT")
        return F.struct(
            F.when(is_object & sku.isNotNull() & ~F.is_variant_null(sku), F.to_json(sku)).alias("sku"),
            F.when(~is_object | qty.isNull(), F.lit(1)).otherwise(
                F.greatest(F.coalesce(number, F.lit(1)), F.lit(0))).cast("long").alias("qty"))

    none = F.array(F.struct(F.lit(None).cast("string").alias("sku"), F.lit(1).cast("long").alias("qty")))
    return F.when(F.size(F.coalesce(items, F.array().cast("array<variant>"))) > 0,
                  F.transform(items, item)).otherwise(none)


def order_lines(silver: DataFrame, history: Callable[[], DataFrame | None]) -> DataFrame:
    """One row per item of every order `silver` (a batch's silver rows) placed, with the newest customer and
    product attributes of silver and the batch joined; the revenue shared out by quantity in cents."""
    wanted = ["collection", "op", "doc_id", *ORDER, *{*CUSTOMER_ATTRIBUTES.values(), *PRODUCT_ATTRIBUTES.values()}]
    references = silver.where(F.col("collection").isin(CUSTOMERS, PRODUCTS))
    references = references.select(*(c for c in wanted if c in references.columns))
    earlier = history()
    if earlier is not None:
        references = references.unionByName(earlier.where(F.col("collection").isin(CUSTOMERS, PRODUCTS))
                                             .select(*(c for c in wanted if c in earlier.columns)),
                                             allowMissingColumns=True)
    customers = _newest_attributes(references, CUSTOMERS, CUSTOMER_ATTRIBUTES, "customer")
    products = _newest_attributes(references, PRODUCTS, PRODUCT_ATTRIBUTES, "product")
    placed = silver.where((F.col("collection") == ORDERS) & (F.col("op") == "insert"))
    # The document is parsed once per order, and its items listed, before the rows are exploded per item:
    # an expression beside the explode would be evaluated per item, parsing the whole order again for
    # each (an order of 100,000 items took 20 minutes so).
    parsed = F.try_parse_json("full_document")
    customer_ref = F.try_variant_get(parsed, "$.customer_id", "variant")
    kept = ["_row", "change_id", F.col("key").alias("order_id"), "event_time", "customer_id", "amount",
            "amount_currency", "event_date", "batch_id", "ingested_at"]
    customer_key = F.when(~F.is_variant_null(customer_ref), F.to_json(customer_ref))
    listed = placed.select(*kept, customer_key.alias("customer_key"), _items(parsed).alias("_items"))
    items = listed.select(*(c for c in listed.columns if c != "_items"),
                          F.posexplode("_items").alias("_at", "_item"))
    line = Window.partitionBy("_row")
    lines = (items.select("*", F.col("_item.sku").alias("_sku"), F.col("_item.qty").alias("qty"))
             .withColumn("product_key", json_key(F.col("_sku")))
             .join(F.broadcast(customers), "customer_key", "left")
             .join(F.broadcast(products), "product_key", "left")
             .withColumn("_total", F.sum("qty").over(line))
             .withColumn("_last", F.max("_at").over(line) == F.col("_at"))
             .withColumn("_share", F.when(F.col("_total") == 0, F.when(F.col("_at") == 0, F.col("amount"))
                                          .otherwise(F.lit(0)))
                         .otherwise(F.bround(F.col("amount") * F.col("qty") / F.col("_total"), 2))
                         .cast("decimal(28,2)"))
             .withColumn("_others", F.sum(F.when(~F.col("_last"), F.col("_share"))).over(line))
             .withColumn("line_revenue", F.when(F.col("_last") & (F.col("_total") != 0),
                                                F.col("amount") - F.coalesce("_others", F.lit(0)))
                         .otherwise(F.col("_share")).cast("decimal(28,2)"))
             .withColumn("first_in_category", F.row_number().over(
                 Window.partitionBy("_row", "product_category").orderBy("_at")) == 1)
             .withColumn("sku", shown_id(F.col("_sku")))
             .withColumn("currency", F.col("amount_currency")))
    return lines.select(*LINE_COLUMNS)


def order_items(document: dict[str, Any]) -> list[tuple[Any, int]]:
    """(product id as the document holds it, quantity) per item of an order document (relaxed Extended
    JSON); an item without a quantity counts once, a document without items is one line of no product."""
    items = document.get("items")
    if not isinstance(items, list) or not items:
        return [(None, 1)]
    out = []
    for item in items:
        item = item if isinstance(item, dict) else {}
        qty = item.get("qty", 1)
        if isinstance(qty, dict):  # canonical Extended JSON ({"$numberInt": "2"})
            qty = next(iter(qty.values()), 1)
        try:
            quantity = max(int(qty), 0)
        except (TypeError, ValueError):
            quantity = 1
        out.append((item.get("sku"), quantity))
    return out


def readable_id(value: Any) -> str | None:
    """An id as people write it: a string as itself, any other BSON value as its Extended JSON."""
    return None if value is None else value if isinstance(value, str) else identity_of(value)


def share_out(amount: Decimal | None, quantities: list[int]) -> list[Decimal | None]:
    """The amount split over the lines by quantity, in cents; the last line takes the rounding, so the
    lines add up to the amount exactly."""
    if amount is None:
        return [None] * len(quantities)
    total = sum(quantities)
    if total == 0:
        return [amount] + [Decimal("0.00")] * (len(quantities) - 1)
    shares = [(amount * q / total).quantize(CENT, ROUND_HALF_EVEN) for q in quantities[:-1]]
    return [*shares, amount - sum(shares, Decimal("0.00"))]
