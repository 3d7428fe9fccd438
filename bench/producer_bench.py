"""Capture throughput: events/s from MongoDB to Kafka-acknowledged, against a bare pymongo watch() loop.

Both read the same events in the same run, with the same change-stream options (database-level
stream filtered to the collection, updateLookup, pre-images), so the ratio is what the producer's
envelope building, JSON encoding, Kafka round trips and token checkpoints cost. Each is timed to its
last event: the bare loop until it has read them all, the producer until Kafka has acknowledged them
all (what follows, noticing the stream is idle and closing it, is one await period of MongoDB's and
not throughput; the run's whole time is printed too).

    make servers && .venv/bin/python bench/producer_bench.py --events 20000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

from lakehouse.adapters.kafka import delete_topics
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.core.collections import ORDERS
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.checkpoint import Checkpoint, FileCheckpointStore
from producer.listener import ChangeStreamListener


def _cpu() -> float:
    """CPU seconds of this process, every thread: with the two servers on the same cores, what the
    producer's own work costs them."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        with db.watch([{"$match": {"ns.coll": ORDERS}}]) as opening:
            start_token = opening.resume_token
        half = args.events // 2
        print(f"writing {args.events} changes to {name}.orders ...", flush=True)
        db.orders.insert_many([{"order_id": f"ord-{i:08d}", "status": "created", "amount": i} for i in range(half)])
        db.orders.update_many({}, {"$set": {"status": "paid"}})
        total = half * 2

        t0, cpu0 = time.perf_counter(), _cpu()
        seen = 0
        with db.watch([{"$match": {"ns.coll": ORDERS}}], full_document="updateLookup",
                      full_document_before_change="whenAvailable", start_after=start_token) as stream:
            while seen < total and stream.try_next() is not None:
                seen += 1
        bare = seen / (time.perf_counter() - t0)
        bare_cpu = _cpu() - cpu0

        # The token's run captured these collections already: the producer copies none of them first,
        # so what Kafka acknowledges is the changes above and nothing else.
        FileCheckpointStore(settings.producer_checkpoint).save(
            Checkpoint(start_token, None, collections=tuple(settings.collections)))
        t0, cpu0 = time.perf_counter(), _cpu()
        running = threading.Thread(target=listener.run, kwargs={"until_idle": True})
        running.start()
        while listener.stats.published < total and running.is_alive():
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        producer_cpu = _cpu() - cpu0
        running.join()
        whole = time.perf_counter() - t0
        captured = listener.stats.published
        listener.close()
        client.drop_database(name)
        delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
        client.close()

    if captured != total:
        raise SystemExit(f"the producer published {captured} events for the {total} changes measured; the ratio "
                         "would not compare like with like")
    producer = captured / elapsed
    print(f"events: {total} (read by bare loop: {seen}, acknowledged by Kafka: {captured})")
    print(f"bare pymongo watch() loop: {bare:,.0f} events/s ({bare_cpu:.2f} s of this process's CPU)")
    print(f"producer (MongoDB -> Kafka acks=all, token persisted): {producer:,.0f} events/s "
          f"(last ack after {elapsed:.2f} s, {producer_cpu:.2f} s of this process's CPU; run ended idle after "
          f"{whole:.2f} s)")
    print(f"ratio producer/bare: {producer / bare:.2f}")


if __name__ == "__main__":
    main()
