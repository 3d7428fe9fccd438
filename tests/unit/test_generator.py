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
