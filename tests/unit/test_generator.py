import mongomock

from producer.generator import OrderGenerator


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
