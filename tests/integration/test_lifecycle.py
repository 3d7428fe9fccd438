"""Collection and database lifecycle events are changes, not errors: a drop, a rename either way and a
dropped database end (or bring) the documents in the warehouse, and capture goes on after each."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.app.reconcile import reconcile
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.helpers import drain, stream_lake
from warehouse.connection import connect
from warehouse.loader import load


def warehouse_orders(settings: Settings) -> int:
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM orders").fetchall()[0][0])
    finally:
        con.close()


def test_drop_rename_and_drop_database_reach_the_warehouse_and_capture_goes_on(spark: object,
                                                                              settings: Settings) -> None:
    client = connect_mongo(settings)
    db = client[settings.mongo_db]

    def caught_up(what: str) -> int:
        drain(settings)
        stream_lake(spark, settings)
        load(settings)
        result = reconcile(settings, "orders")
        assert result.ok, f"after {what}: {result.line()} {result.examples()}"
        return result.source

    OrderGenerator(db["orders"], seed=51).run(120)
    assert caught_up("the first orders") > 0
    db["orders"].drop()
    OrderGenerator(db["orders"], seed=52).run(30)  # the collection made again by new writes
    assert caught_up("a drop and new orders") > 0

    db["orders"].rename("orders_archive")  # away from the captured name: its documents end
    assert caught_up("a rename away") == 0 and warehouse_orders(settings) == 0
    OrderGenerator(db["staging"], seed=53).run(40)
    # onto the captured name (the producer made an empty one to set pre-images): its documents arrive, copied
    db["staging"].rename("orders", dropTarget=True)
    assert caught_up("a rename onto orders") > 0

    client.drop_database(settings.mongo_db)  # ends everything, and invalidates the stream
    OrderGenerator(db["orders"], seed=54).run(25)  # capture goes on after the invalidate
    assert caught_up("a dropped database and new orders") > 0

    report = json.loads(CliRunner().invoke(cli, ["status", "--json"], env=settings.to_env()).output)
    last = report["producer"]["last_lifecycle_event"]
    assert last["operation"] == "dropDatabase" and last["db"] == settings.mongo_db


def test_a_running_producer_turns_pre_images_on_again_after_a_drop(settings: Settings) -> None:
    """A dropped collection (or database) loses its pre-image setting; a producer that goes on running makes
    it again with pre-images, so a document's delete keeps its key and its partition: each document's
    insert and delete land in one partition."""
    from tests.conftest import wait_for
    from tests.helpers import read_topic, start_cli

    client = connect_mongo(settings)
    db = client[settings.mongo_db]

    def pre_images_on() -> bool:
        found = list(db.list_collections(filter={"name": "orders"}))
        return bool(found) and found[0]["options"].get("changeStreamPreAndPostImages", {}).get("enabled") is True

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    producer = start_cli(settings, settings.state_dir / "producer.log", "produce")
    try:
        wait_for(pre_images_on, 120, "the producer's pre-images at start")
        for drop in (lambda: db["orders"].drop(), lambda: client.drop_database(settings.mongo_db)):
            drop()  # nothing else makes the collection again: only the producer can turn them on
            wait_for(pre_images_on, 60, "pre-images on again after the drop")
        for n in range(12):  # with 3 partitions, an _id-keyed delete would land elsewhere for most of them
            db["orders"].insert_one({"order_id": f"o-{n}"})
            db["orders"].delete_one({"order_id": f"o-{n}"})

        def both_events() -> list[dict] | None:
            events = [e for e in read_topic(settings, settings.topic_for("orders")) if e["op"] in ("insert", "delete")]
            return events if len(events) >= 24 else None

        events = wait_for(both_events, 120, "the inserts and deletes in Kafka")
        for doc_id in {e["doc_id"] for e in events}:
            mine = [(e["op"], e["key"], e["partition"]) for e in events if e["doc_id"] == doc_id]
            assert len({partition for _, _, partition in mine}) == 1 and len({key for _, key, _ in mine}) == 1, mine
        assert producer.poll() is None, (settings.state_dir / "producer.log").read_text()[-3000:]
    finally:
        producer.terminate()
        producer.wait(30)
