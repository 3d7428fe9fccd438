"""Synthetic order traffic: inserts, status updates, replaces and deletes at a chosen rate.

Amounts come in the messy shapes real systems send ("$1,234.50", "1.234,50 EUR", 12.5, "") so the
streaming stage has something real to parse. With customers and products captured too, every order
references a customer and products that exist (made first when new). `violations` is the share of
changes that break a business rule of collections.toml on purpose (a missing customer, a negative
amount, an unknown status or currency, a status moving backwards, a customer or product that does not
exist), so the quality checks have something to find. Customers carry a segment and a country, products
a category and a stock level: each order placed takes its items out of stock, and now and then a product
that ran low is restocked, so the inventory alerts have crossings to report. Seeded, so a run can be
repeated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakehouse.adapters.mongo import WriteBuffer
from lakehouse.core.collections import CUSTOMERS, ORDERS, PRODUCTS

if TYPE_CHECKING:  # types only: the generator writes through whatever client it is handed
    from pymongo.collection import Collection
    from pymongo.database import Database

STATUS_FLOW = {
    "created": "paid",
    "paid": "shipped",
    "shipped": "delivered",
    "delivered": "delivered",
    "cancelled": "cancelled",
}
CURRENCIES = ("USD", "EUR", "GBP")
SEGMENTS = ("consumer", "business", "vip")
COUNTRIES = ("DE", "FR", "GB", "US", "NL", "ES")
CATEGORIES = ("books", "electronics", "garden", "kitchen", "toys", "sports")
RESTOCK_BELOW = 20  # a product at or under this stock may be restocked (INVENTORY_LOW's default)
RESTOCK_SHARE = 0.03  # share of steps that restock one such product
MAX_HELD = 200  # writes held at most before they are sent together (see run)
VIOLATIONS = ("missing_customer", "negative_amount", "unknown_status", "unknown_currency", "backwards_status",
              "unknown_customer", "unknown_product")


def messy_amount(rng: random.Random) -> Any:
    value = round(rng.uniform(1, 2500), 2)
    shape = rng.randrange(10)
    if shape == 0:
        return f"${value:,.2f}"
    if shape == 1:
        whole, cents = f"{value:,.2f}".split(".")
        return f"{whole.replace(',', '.')},{cents} EUR"
    if shape == 2:
        return f"USD {int(value)}"
    if shape == 3:
        return int(value)
    if shape == 4:
        return rng.choice(["", "n/a", "??"])
    return value


@dataclass
class GeneratorStats:
    inserts: int = 0
    updates: int = 0
    replaces: int = 0
    deletes: int = 0
    references: int = 0  # customer / product upserts
    violations: int = 0  # of the changes above, those made to break a business rule

    @property
    def total(self) -> int:
        return self.inserts + self.updates + self.replaces + self.deletes + self.references


class OrderGenerator:
    """Order changes; with `references` (e.g. customers, products) one change in ten touches those."""

    def __init__(self, orders: Collection, seed: int = 42, references: tuple[Collection, ...] = (),
                 violations: float = 0.0) -> None:
        if not 0.0 <= violations <= 1.0:
            raise ValueError(f"violations must be a share between 0 and 1, not {violations}")
        self.orders = orders
        self.references = references
        self.violations = violations
        self._by_name = {c.name: c for c in references}
        # Ids that exist in the reference collections, so orders only reference those (unless told not to).
        self._known: dict[str, set[str]] = {c.name: {d["_id"] for d in c.find({}, {"_id": 1})} for c in references}
        # Stock per product as this generator last wrote it (it is the products' only writer).
        self._stock: dict[str, int] = {d["_id"]: int(d["stock"]) for d in self._by_name[PRODUCTS].find(
            {"stock": {"$type": "number"}}, {"stock": 1})} if PRODUCTS in self._by_name else {}
        orders.create_index("order_id", unique=True)
        self.rng = random.Random(seed)
        # Live order ids, so updates and deletes hit documents that exist, and their status as this generator
        # last wrote it (it is the orders' only writer), so a change needs no read first.
        self.live: list[str] = []
        self._status: dict[str, Any] = {}
        for d in orders.find({}, {"order_id": 1, "status": 1}):
            if "order_id" in d:
                self.live.append(d["order_id"])
                if "status" in d:
                    self._status[d["order_id"]] = d["status"]
        # References first: an order's customer and products exist before the order arrives.
        self._writes = WriteBuffer((*references, orders))
        self._holding = False
        self._next = self._first_free_number()
        self.stats = GeneratorStats()

    @classmethod
    def for_database(cls, db: Database, collections: tuple[str, ...], seed: int = 42,
                     violations: float = 0.0) -> OrderGenerator:
        """Orders, plus every other configured collection as a reference collection."""
        return cls(db[ORDERS], seed, tuple(db[name] for name in collections if name != ORDERS), violations)

    def _first_free_number(self) -> int:
        numbers = [int(o.split("-")[1]) for o in self.live if o.startswith("ord-") and o[4:].isdigit()]
        return max(numbers, default=0) + 1

    def new_order(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        order_id = f"ord-{self._next:08d}"
        self._next += 1
        order = {
            "order_id": order_id,
            "customer_id": self._reference_id(CUSTOMERS),
            "status": "created",
            "amount": messy_amount(self.rng),
            "currency": self.rng.choice(CURRENCIES),
            "items": [
                {"sku": self._reference_id(PRODUCTS), "qty": self.rng.randrange(1, 5)}
                for _ in range(self.rng.randrange(1, 4))
            ],
            "created_at": now,
            "updated_at": now,
        }
        return order

    def _reference_id(self, name: str) -> str:
        """A customer (cust-NNNN) or product (sku-NNNN) id; when that collection is generated too, one
        that exists (made now if new)."""
        key = f"cust-{self.rng.randrange(1, 200):04d}" if name == CUSTOMERS else f"sku-{self.rng.randrange(1, 500):04d}"
        if name in self._by_name and key not in self._known[name]:
            self._upsert_reference(self._by_name[name], key)
        return key

    def _upsert_reference(self, collection: Collection, key: str) -> None:
        created: dict[str, Any] = {}  # attributes a new document is made with; a touch leaves them
        if collection.name == CUSTOMERS:
            created = {"segment": self.rng.choice(SEGMENTS), "country": self.rng.choice(COUNTRIES)}
        elif collection.name == PRODUCTS:
            created = {"category": self.rng.choice(CATEGORIES), "stock": self.rng.randrange(21, 60)}
        known = key in self._known.get(collection.name, set())
        self._writes.update(
            collection, key, {"_id": key},
            {"$set": {"name": f"{collection.name} {key}", "score": self.rng.randrange(100),
                      "updated_at": datetime.now(UTC)},
             **({"$setOnInsert": created} if created and not known else {})},
            upsert=True,
        )
        if collection.name == PRODUCTS and not known:
            self._writes.flush()  # the stock it has now: what it was made with, or had if another made it
            found = collection.find_one({"_id": key}, {"stock": 1}) or {}
            if isinstance(found.get("stock"), int):
                self._stock[key] = found["stock"]
        self._known.setdefault(collection.name, set()).add(key)
        self.stats.references += 1

    def _place(self, order: dict[str, Any]) -> None:
        """Insert an order and take its items out of stock (never below 0)."""
        self._writes.insert(self.orders, order["order_id"], order)
        self.live.append(order["order_id"])
        self._status[order["order_id"]] = order.get("status")
        self.stats.inserts += 1
        if PRODUCTS not in self._by_name:
            return
        for item in order.get("items", []):
            sku = item.get("sku")
            if sku not in self._stock:
                continue
            self._stock[sku] = max(0, self._stock[sku] - int(item.get("qty", 1)))
            self._set_stock(sku)

    def _set_stock(self, sku: str) -> None:
        self._writes.update(self._by_name[PRODUCTS], sku, {"_id": sku},
                            {"$set": {"stock": self._stock[sku], "updated_at": datetime.now(UTC)}})
        self.stats.references += 1

    def _restock(self) -> bool:
        """Bring one product that ran low back to a full shelf; False when none has."""
        low = sorted(sku for sku, stock in self._stock.items() if stock <= RESTOCK_BELOW)
        if not low:
            return False
        sku = self.rng.choice(low)
        self._stock[sku] = self.rng.randrange(40, 100)
        self._set_stock(sku)
        return True

    def _touch_reference(self) -> None:
        """Upsert a customer or product: documents without an order_id (keyed by _id in Kafka)."""
        collection = self.rng.choice(self.references)
        if collection.name == CUSTOMERS:
            key = f"cust-{self.rng.randrange(1, 200):04d}"
        elif collection.name == PRODUCTS:
            key = f"sku-{self.rng.randrange(1, 500):04d}"
        else:
            key = f"{collection.name}-{self.rng.randrange(1, 200):04d}"
        self._upsert_reference(collection, key)

    def _violate(self) -> None:
        """One change that breaks a business rule (collections.toml), of a kind chosen at random."""
        kind = self.rng.choice(VIOLATIONS)
        order_id = self.rng.choice(self.live) if self.live else None
        status = self._status.get(order_id) if order_id else None
        if kind == "backwards_status" and status not in ("paid", "shipped", "delivered"):
            kind = "unknown_currency"  # nothing to move back from
        if kind in ("unknown_status", "backwards_status") and order_id:
            self._set_status(order_id, "lost-in-transit" if kind == "unknown_status" else "created")
        else:
            doc = self.new_order()
            if kind == "missing_customer":
                del doc["customer_id"]
            elif kind == "negative_amount":
                doc["amount"] = -round(self.rng.uniform(1, 500), 2)
            elif kind == "unknown_currency":
                doc["currency"] = "XTS"
            elif kind == "unknown_customer":
                doc["customer_id"] = f"cust-unknown-{self.rng.randrange(10**6):06d}"
            elif kind == "unknown_product":
                doc["items"].append({"sku": f"sku-unknown-{self.rng.randrange(10**6):06d}", "qty": 1})
            self._place(doc)
        self.stats.violations += 1

    def _set_status(self, order_id: str, status: str) -> None:
        self._writes.update(self.orders, order_id, {"order_id": order_id},
                            {"$set": {"status": status, "updated_at": datetime.now(UTC)}})
        self._status[order_id] = status
        self.stats.updates += 1

    def step(self) -> None:
        """One change (an order placed, paid, rewritten, deleted; a customer or product touched), written
        before it returns unless `steps` or `run` are holding writes to send them together."""
        self._step()
        if not self._holding:
            self._writes.flush()

    def steps(self, count: int) -> None:
        """`count` steps whose writes are sent together (one bulk write per collection; see WriteBuffer)."""
        self._holding = True
        try:
            for _ in range(count):
                self._step()
        finally:
            self._holding = False
        self._writes.flush()

    def _step(self) -> None:
        roll = self.rng.random()
        if self.violations and self.rng.random() < self.violations:
            self._violate()
        elif self.references and self.rng.random() < 0.1:
            self._touch_reference()
        elif self._stock and self.rng.random() < RESTOCK_SHARE and self._restock():
            pass
        elif not self.live or roll < 0.45:
            self._place(self.new_order())
        elif roll < 0.80:
            order_id = self.rng.choice(self.live)
            status = self._status.get(order_id, "created")
            cancel = self.rng.random() < 0.1 and status == "created"
            self._set_status(order_id, "cancelled" if cancel else STATUS_FLOW.get(status, "cancelled"))
        elif roll < 0.88:
            order_id = self.rng.choice(self.live)
            doc = self.new_order()
            self._next -= 1
            doc["order_id"] = order_id
            # Customer service rewrites the order; its status stays where it was (a move back is a violation).
            doc["status"] = self._status.get(order_id, "created")
            doc["note"] = "replaced by customer service"
            self._writes.replace(self.orders, order_id, {"order_id": order_id}, doc)
            self._status[order_id] = doc["status"]
            self.stats.replaces += 1
        else:
            order_id = self.live.pop(self.rng.randrange(len(self.live)))
            self._writes.delete(self.orders, order_id, {"order_id": order_id})
            self._status.pop(order_id, None)
            self.stats.deletes += 1

    def run(
        self,
        changes: int,
        rate: float | None = None,
        progress: Callable[[GeneratorStats], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> GeneratorStats:
        """Make `changes` changes, at most `rate` per second (None: as fast as MongoDB takes them);
        end early once `stop()` is true. A change is any write: an order placed with its stock taken
        down counts each product's update, so the last step may go a few over.

        With a rate, writes are held while the run is behind it and sent together once it is on time
        again, or when MAX_HELD are held: the batches grow to what the machine's round trips allow, and
        at a rate it keeps up with every change is sent at its time. Without one, each change is sent
        as it is made. Everything is sent before it returns."""
        started = time.monotonic()
        first = self.stats.total
        reported = 0
        self._holding = True
        try:
            while (made := self.stats.total - first) < changes:
                if stop is not None and stop():
                    break
                self._step()
                made = self.stats.total - first
                ahead = started + made / rate - time.monotonic() if rate else 0.0
                if not rate or ahead > 0 or len(self._writes) >= MAX_HELD:
                    self._writes.flush()
                if ahead > 0:
                    time.sleep(ahead)
                if progress and (made // 500 > reported or made >= changes):
                    reported = made // 500
                    self._writes.flush()  # what it reports is written
                    progress(self.stats)
        finally:
            self._holding = False
        self._writes.flush()
        return self.stats
