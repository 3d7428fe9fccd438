"""Capture throughput: events/s from MongoDB to Kafka-acknowledged, against a bare pymongo watch() loop.

Both read the same events in the same run, with the same change-stream options (database-level
stream filtered to the collection, updateLookup, pre-images), so the ratio is what the producer's
envelope building, JSON encoding, Kafka round trips and token checkpoints cost.

    make servers && .venv/bin/python bench/producer_bench.py --events 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.checkpoint import Checkpoint, FileCheckpointStore
from producer.listener import ChangeStreamListener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="changes to capture (half inserts, half updates)")
    args = parser.parse_args()
    configure("WARNING")

    name = f"bench_{int(time.time())}"
    with tempfile.TemporaryDirectory() as state:
        settings = Settings.from_env(mongo_db=name, topic_prefix=name, state_dir=Path(state))
        client = connect_mongo(settings)
        db = client[name]
        listener = ChangeStreamListener(settings, snapshot_mode="never")
        listener.prepare()  # topics and pre-images, outside the timed part
        with db.watch([{"$match": {"ns.coll": "orders"}}]) as opening:
            start_token = opening.resume_token
        half = args.events // 2
        print(f"writing {args.events} changes to {name}.orders ...", flush=True)
        db.orders.insert_many([{"order_id": f"ord-{i:08d}", "status": "created", "amount": i} for i in range(half)])
        db.orders.update_many({}, {"$set": {"status": "paid"}})
        total = half * 2

        t0 = time.perf_counter()
        seen = 0
        with db.watch([{"$match": {"ns.coll": "orders"}}], full_document="updateLookup",
                      full_document_before_change="whenAvailable", start_after=start_token) as stream:
            while seen < total and stream.try_next() is not None:
                seen += 1
        bare = seen / (time.perf_counter() - t0)

        FileCheckpointStore(settings.producer_checkpoint).save(Checkpoint(start_token, None))
        t0 = time.perf_counter()
        listener.run(until_idle=True)
        elapsed = time.perf_counter() - t0
        captured = listener.stats.published
        listener.close()
        client.drop_database(name)
        client.close()

    producer = captured / elapsed
    print(f"events: {total} (read by bare loop: {seen}, acknowledged by Kafka: {captured})")
    print(f"bare pymongo watch() loop: {bare:,.0f} events/s")
    print(f"producer (MongoDB -> Kafka acks=all, token persisted): {producer:,.0f} events/s")
    print(f"ratio producer/bare: {producer / bare:.2f}")


if __name__ == "__main__":
    main()
