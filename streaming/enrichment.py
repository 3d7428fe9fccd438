"""Stream–table join: each order placed, line by line, with its customer's and its products' attributes as
the lake holds them when the order's micro-batch is written (the customers and products tables are the
latest version of each document in silver, in source order).

It runs inside the lake query's batch function, next to silver: the reference state is read from all of
silver once, then kept up to date from each batch's own silver rows before the batch's orders are joined,
so an order sees a customer created earlier in the same batch. A batch Spark replays after a crash reads
the same state back (its own rows included), so it writes the same lines. A customer or product that has
not arrived yet leaves its attributes null (the quality rules flag the reference, and the warehouse's
quality_open_references re-checks it); the line is not held back.
"""

from __future__ import annotations

import json
import logging
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.adapters.delta import LakeTable
from lakehouse.contracts import tables, types
from lakehouse.contracts.events import DOCUMENT_OPERATIONS, identity_of

log = logging.getLogger(__name__)

ORDERS, CUSTOMERS, PRODUCTS = "orders", "customers", "products"
# line column -> attribute of the referenced document (a silver column the collections spec lifts)
CUSTOMER_ATTRIBUTES = {"customer_segment": "segment", "customer_country": "country"}
PRODUCT_ATTRIBUTES = {"product_name": "name", "product_category": "category"}
ORDER = tables.SOURCE_ORDER
CENT = Decimal("0.01")


class ReferenceState:
    """The newest attributes of every customer and product in silver."""

    def __init__(self, silver_path: Path, active: bool) -> None:
        self.silver_path = silver_path
        self.active = active  # orders captured, with money and a customer_id
        self._attributes: dict[str, dict[str, tuple[tuple[int, int, int], dict[str, Any]]]] | None = None

    def _load(self) -> None:
        self._attributes = {CUSTOMERS: {}, PRODUCTS: {}}
        table = LakeTable.open(self.silver_path)
        if table is None:
            return
        names = set(table.arrow_schema().names)
        wanted = [c for c in {*CUSTOMER_ATTRIBUTES.values(), *PRODUCT_ATTRIBUTES.values()} if c in names]
        rows = table.read(["collection", "op", "doc_id", *ORDER, *sorted(wanted)])
        rows = rows.filter(pc.is_in(rows["collection"], pa.array([CUSTOMERS, PRODUCTS])))
        self.remember(rows)
        log.info("enrichment: %d customer and product changes read from silver", rows.num_rows)

    def remember(self, silver: pa.Table) -> None:
        """Take in a batch's silver rows (before its orders are joined)."""
        if self._attributes is None:
            return
        refs = silver.filter(pc.and_(pc.is_in(silver["collection"], pa.array([CUSTOMERS, PRODUCTS])),
                                     pc.is_in(silver["op"], pa.array(DOCUMENT_OPERATIONS))))
        if refs.num_rows == 0:
            return
        for row in refs.to_pylist():
            wanted = CUSTOMER_ATTRIBUTES if row["collection"] == CUSTOMERS else PRODUCT_ATTRIBUTES
            order = tuple(row[c] for c in ORDER)
            known = self._attributes[row["collection"]].get(row["doc_id"])
            if known is None or known[0] < order:
                self._attributes[row["collection"]][row["doc_id"]] = (
                    order, {line: row.get(attribute) for line, attribute in wanted.items()})  # type: ignore[assignment]

    def order_lines(self, silver: pa.Table) -> pa.Table:
        """One row per item of every order this batch placed (inserts), with the attributes joined."""
        if not self.active:
            return pa.table({name: [] for name, _ in tables.ORDER_LINES_COLUMNS})
        if self._attributes is None:
            self._load()
        self.remember(silver)
        assert self._attributes is not None
        placed = silver.filter(pc.and_(pc.equal(silver["collection"], ORDERS), pc.equal(silver["op"], "insert")))
        lines: list[dict[str, Any]] = []
        for order in placed.select(["change_id", "order_id", "event_time", "customer_id", "amount", "amount_currency",
                                    "full_document", "event_date"]).to_pylist():
            document = _object(order["full_document"])
            customer_id = document.get("customer_id")
            customer = {} if customer_id is None else self._attributes[CUSTOMERS].get(identity_of(customer_id),
                                                                                      ((), {}))[1]
            items = order_items(document)
            revenue = share_out(order["amount"], [qty for _, qty in items])
            categories: set[Any] = set()
            for (sku, qty), line_revenue in zip(items, revenue, strict=True):
                product = {} if sku is None else self._attributes[PRODUCTS].get(identity_of(sku), ((), {}))[1]
                category = product.get("product_category")
                lines.append({
                    "change_id": order["change_id"], "order_id": order["order_id"], "event_time": order["event_time"],
                    "customer_id": order["customer_id"], **{c: customer.get(c) for c in CUSTOMER_ATTRIBUTES},
                    "sku": readable_id(sku), **{c: product.get(c) for c in PRODUCT_ATTRIBUTES}, "qty": qty,
                    "line_revenue": line_revenue, "currency": order["amount_currency"],
                    "first_in_category": category not in categories, "event_date": order["event_date"],
                })
                categories.add(category)
        columns = [name for name, _ in tables.ORDER_LINES_COLUMNS if name not in ("batch_id", "ingested_at")]
        schema = types.arrow_schema(tables.ORDER_LINES_COLUMNS)
        return pa.Table.from_pylist(lines, pa.schema([schema.field(c) for c in columns]))


def _object(document: str | None) -> dict[str, Any]:
    try:
        found = json.loads(document or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


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
