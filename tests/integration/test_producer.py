import json

import pytest
from kafka.partitioner.default import murmur2
from pymongo import MongoClient

from lakehouse.contracts.events import STREAMED_OPERATIONS
from lakehouse.core.config import KAFKA_CLIENTS, Settings
from producer.generator import OrderGenerator
from tests.helpers import drain, read_topic


@pytest.mark.parametrize("client", KAFKA_CLIENTS)
def test_snapshot_then_stream_across_a_restart_loses_nothing(settings: Settings, client: str) -> None:
    settings = settings.replace(kafka_client=client)
    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    generator = OrderGenerator(orders, seed=1)
    generator.run(150)
    existing = orders.count_documents({})
    drain(settings)  # snapshot of `existing`, then the (empty) stream
    generator.run(250)
    drain(settings)  # a new process: resumes from the stored token

    messages = read_topic(settings, settings.topic_for("orders"))
    ids = [m["change_id"] for m in messages]
    assert len(ids) == len(set(ids)), "a change was published twice under different ids"
    assert sum(m["op"] == "snapshot" for m in messages) == existing
    assert sum(m["op"] in STREAMED_OPERATIONS for m in messages) == 250
    # Keyed by order_id, deletes included (pre-images); one order's changes share a partition.
    partitions: dict[str, set[int]] = {}
    for m in messages:
        if m["op"] == "snapshot_end":
            continue
        assert m["kafka_key"] == m["key"] and m["key"].startswith("ord-"), m
        partitions.setdefault(m["key"], set()).add(m["partition"])
    assert all(len(p) == 1 for p in partitions.values())
    # Either client puts a key where Java's default partitioner does: switching clients keeps partitions.
    java = {k: (murmur2(k.encode()) & 0x7FFFFFFF) % settings.kafka_partitions for k in partitions}
    assert {k: p.pop() for k, p in partitions.items()} == java
    # Within a partition, source order is kept.
    for p in {m["partition"] for m in messages}:
        streamed = [m for m in messages if m["partition"] == p and m["op"] in STREAMED_OPERATIONS]
        order = [(m["cluster_time_s"], m["cluster_time_inc"], m["txn_op_index"]) for m in streamed]
        assert order == sorted(order)


def test_stored_token_moves_forward_when_idle(settings: Settings) -> None:
    client = MongoClient(settings.mongo_uri)
    client[settings.mongo_db]["orders"].insert_one({"order_id": "ord-1"})
    drain(settings)
    first = json.loads(settings.producer_checkpoint.read_text())["resume_token"]
    client[settings.mongo_db]["unwatched"].insert_many([{"x": i} for i in range(5)])
    drain(settings)
    second = json.loads(settings.producer_checkpoint.read_text())["resume_token"]
    assert second != first, "an idle collection left the stored token behind"


def test_each_update_carries_the_document_as_that_update_left_it(settings: Settings) -> None:
    """Quick successive updates: the looked-up document would show the last state for all of them; the
    event's full_document is the pre-image with the update applied, equal to a read right after it."""
    import random

    from pymongo.errors import WriteError

    from lakehouse.contracts.events import canonical_document

    rng = random.Random(1)
    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    drain(settings)
    orders.insert_one({"_id": 1, "order_id": "o1", "stock": 30, "items": [{"sku": "a", "qty": 1}], "meta": {"x": 1}})
    updates = [lambda: {"$set": {"stock": rng.randrange(100)}}, lambda: {"$inc": {"stock": -1}},
               lambda: {"$push": {"items": {"sku": "b", "qty": rng.randrange(5)}}},
               lambda: {"$pull": {"items": {"sku": "b"}}}, lambda: {"$set": {"items.0.qty": rng.randrange(9)}},
               lambda: {"$unset": {"meta.x": ""}}, lambda: {"$set": {"meta.y.z": rng.random()}},
               lambda: {"$set": {"note": "n"}}, lambda: {"$unset": {"note": ""}}, lambda: {"$pop": {"items": 1}},
               lambda: {"$set": {"items.3": {"sku": "pad"}}}]
    states = []
    for _ in range(120):
        try:
            if orders.update_one({"_id": 1}, rng.choice(updates)()).modified_count:
                states.append(canonical_document(orders.find_one({"_id": 1})))
        except WriteError:  # e.g. a path through a null array element: MongoDB refuses, nothing changes
            pass
    orders.delete_one({"_id": 1})  # gone before the producer reads: a lookup would find nothing
    drain(settings)
    events = [m for m in read_topic(settings, settings.topic_for("orders")) if m["op"] == "update"]
    assert len(events) == len(states) > 50
    assert [canonical_document(m["full_document"]) for m in events] == states
