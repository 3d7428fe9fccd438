from collections.abc import Iterator

import mongomock
import mongomock.collection
import pytest

from producer.generator import OrderGenerator


@pytest.fixture(autouse=True)
def _mongomock_takes_pymongos_bulk_operations(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """mongomock 4.3's bulk builder predates pymongo 4.20's `sort` argument of UpdateOne/ReplaceOne (the
    generator sends its writes with bulk_write): accept it when unused, as the server would."""
    builder = mongomock.collection.BulkOperationBuilder
    for name in ("add_update", "add_replace"):
        original = getattr(builder, name)

        def without_sort(self: object, *args: object, _original: object = original, sort: object = None,
                         **kwargs: object) -> object:
            assert sort is None, "mongomock cannot sort an update"
            return _original(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(builder, name, without_sort)
    yield


def test_generator_makes_the_requested_changes_on_live_orders() -> None:
    orders = mongomock.MongoClient().shop.orders
    generator = OrderGenerator(orders, seed=7)
    stats = generator.run(400)
    assert stats.total == 400
    assert stats.inserts and stats.updates and stats.replaces and stats.deletes
    assert orders.count_documents({}) == len(generator.live) == stats.inserts - stats.deletes
    # A second generator on the same data continues the numbering instead of colliding.
    again = OrderGenerator(orders, seed=8)
    again.run(50)
    assert orders.count_documents({}) == len(again.live)


def test_reference_collections_get_upserts_keyed_without_order_id() -> None:
    db = mongomock.MongoClient().shop
    generator = OrderGenerator.for_database(db, ("orders", "customers", "products"), seed=3)
    stats = generator.run(300)
    assert stats.references > 0
    assert db.customers.count_documents({}) + db.products.count_documents({}) > 0
    assert db.customers.find_one({"order_id": {"$exists": True}}) is None


def test_orders_reference_customers_and_products_that_exist() -> None:
    db = mongomock.MongoClient().shop
    OrderGenerator.for_database(db, ("orders", "customers", "products"), seed=4).run(300)
    customers = {d["_id"] for d in db.customers.find()}
    products = {d["_id"] for d in db.products.find()}
    for order in db.orders.find():
        assert order["customer_id"] in customers
        assert {item["sku"] for item in order["items"]} <= products


def test_a_share_of_violations_breaks_the_rules_on_purpose() -> None:
    db = mongomock.MongoClient().shop
    generator = OrderGenerator.for_database(db, ("orders", "customers", "products"), seed=4, violations=0.2)
    stats = generator.run(500)
    assert stats.total >= 500
    orders_changes = stats.inserts + stats.updates + stats.replaces + stats.deletes  # the rest: customers, products
    assert 0.12 <= stats.violations / orders_changes <= 0.3
    orders = list(db.orders.find())
    assert any("customer_id" not in o for o in orders)
    assert any(o["currency"] == "XTS" for o in orders)
    assert any(isinstance(o["amount"], float) and o["amount"] < 0 for o in orders)
    assert OrderGenerator.for_database(db, ("orders",), seed=4).violations == 0.0
    try:
        OrderGenerator(db.orders, violations=1.5)
    except ValueError as exc:
        assert "between 0 and 1" in str(exc)
    else:
        raise AssertionError("a share above 1 was accepted")


def _state(db: object) -> dict[str, list[dict[str, object]]]:
    drop = {"created_at", "updated_at"}
    return {name: sorted(({k: v for k, v in d.items() if k not in drop} for d in db[name].find({}, {"_id": 0})),  # type: ignore[index]
                         key=repr) for name in ("orders", "customers", "products")}


def test_writes_sent_together_end_in_the_same_documents_as_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held writes (`steps`, and `run` behind its rate) are sent as one bulk write per collection, with
    each document written at most once per batch: the documents end as when each change is sent as it is
    made, with far fewer round trips."""
    def shop() -> object:
        db = mongomock.MongoClient().shop
        # Every customer and product there already: no first-time reads, which send what is held.
        db.customers.insert_many([{"_id": f"cust-{n:04d}", "segment": "vip"} for n in range(1, 200)])
        db.products.insert_many([{"_id": f"sku-{n:04d}", "stock": 50} for n in range(1, 500)])
        return db

    def generator(db: object) -> OrderGenerator:
        return OrderGenerator.for_database(db, ("orders", "customers", "products"), seed=9, violations=0.1)  # type: ignore[arg-type]

    bulk_writes = []
    original = mongomock.collection.Collection.bulk_write

    def counted(self: object, requests: list[object], **kwargs: object) -> object:
        bulk_writes.append(len(requests))
        return original(self, requests, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", counted)
    one_at_a_time, behind = shop(), shop()
    generator(one_at_a_time).run(600)
    one_by_one = len(bulk_writes)  # a round trip per change (an order's stock updates go together)
    bulk_writes.clear()
    clock = iter(range(0, 10**9, 10))  # 10 s pass between two looks at the clock: always behind a rate of 100/s
    monkeypatch.setattr("producer.generator.time.monotonic", lambda: float(next(clock)))
    generator(behind).run(600, rate=100)  # every batch held until MAX_HELD or a document written again
    assert _state(behind) == _state(one_at_a_time)
    assert sum(bulk_writes) >= 600 and len(bulk_writes) < one_by_one / 5

    single, stepped = shop(), shop()
    one, together = generator(single), generator(stepped)
    for _ in range(400):
        one.step()
    for _ in range(16):
        together.steps(25)
    assert _state(stepped) == _state(single) and together.stats == one.stats


def test_a_document_written_twice_sends_what_is_held_first() -> None:
    from lakehouse.adapters.mongo import WriteBuffer

    db = mongomock.MongoClient().shop
    writes = WriteBuffer((db.customers, db.orders))
    writes.insert(db.orders, "o1", {"_id": "o1", "customer": "c1", "n": 1})
    writes.insert(db.customers, "c1", {"_id": "c1"})
    assert len(writes) == 2 and db.orders.count_documents({}) == 0
    writes.update(db.orders, "o1", {"_id": "o1"}, {"$set": {"n": 2}})  # o1 again: the insert goes first
    assert len(writes) == 1 and db.orders.find_one({"_id": "o1"})["n"] == 1 and db.customers.count_documents({}) == 1
    writes.flush()
    assert db.orders.find_one({"_id": "o1"})["n"] == 2 and len(writes) == 0
