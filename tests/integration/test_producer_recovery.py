"""The producer's promises under failure: kill -9, lost history, concurrent snapshot, poison input."""

from __future__ import annotations

import json
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import servers
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import events
from lakehouse.core.config import KAFKA_CLIENTS, Settings
from producer.checkpoint import FileCheckpointStore
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener
from tests.conftest import wait_for
from tests.helpers import drain, free_port, mongo_state, read_topic, replay, start_cli, witness_change_ids


def published(settings: Settings) -> int:
    checkpoint = FileCheckpointStore(settings.producer_checkpoint).load()
    return checkpoint.events_published if checkpoint else -1


# Enough changes for six kills at random points while they flow (each after 150-500 more acknowledged
# events), with changes still flowing after the last: 10,000 took 7 minutes per client on a busy machine.
CHANGES = 3_000


def _up(log: Path) -> int:
    """How many producers of this log got as far as serving (their stop handlers are set then)."""
    return log.read_text(errors="replace").count("producer metrics at") if log.exists() else 0


@pytest.mark.faults
def test_kill_9_six_times_during_changes_loses_nothing_with_either_client(settings: Settings, tmp_path: Path) -> None:
    """Property: a producer SIGKILLed at any point while changes flow, and started again, publishes every
    change at least once (nothing lost), and what it publishes again is the same event (same change_id,
    same content): the resume token is saved only after Kafka acknowledged. The producers take turns
    between the two Kafka clients, so each is killed three times and each carries on from a checkpoint the
    other wrote (one run for both clients instead of one each)."""
    clients = [KAFKA_CLIENTS[n % len(KAFKA_CLIENTS)] for n in range(7)]
    db = connect_mongo(settings)[settings.mongo_db]
    start_at = db.command("ping")["operationTime"]
    log = tmp_path / "producer.log"
    producer = start_cli(settings.replace(kafka_client=clients[0]), log, "produce")
    wait_for(lambda: published(settings) >= 0, 60, "the producer's first checkpoint (stream opened)")

    generator = OrderGenerator(db["orders"], seed=5)
    writer = threading.Thread(target=generator.run, args=(CHANGES,), daemon=True)
    writer.start()
    rng = random.Random(9)
    flowing = []  # per kill: were changes still being made?
    for kill, client in enumerate(clients[1:]):
        # Kill at a random point while changes are flowing: after some more events were acknowledged.
        target = published(settings) + rng.randrange(150, 500)
        wait_for(lambda t=target: published(settings) >= t or not writer.is_alive(), 120,
                 f"the producer to pass {target} events before kill {kill + 1}")
        flowing.append(writer.is_alive())
        producer.send_signal(signal.SIGKILL)
        producer.wait(10)
        up_before = _up(log)
        producer = start_cli(settings.replace(kafka_client=client), log, "produce")
    writer.join(300)
    assert not writer.is_alive() and generator.stats.total == CHANGES
    assert flowing[:2] == [True, True], f"each client must be killed mid-stream at least once: {flowing}"
    # The last one is up (its handlers are set as it serves its metrics), not still importing: a SIGTERM
    # before the interpreter has run any of the producer's code ends it as any process (-15).
    wait_for(lambda: _up(log) > up_before, 120, "the last producer started")
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(60) == 0, log.read_text()[-3000:]
    drain(settings)  # whatever the last process had not acknowledged

    made = witness_change_ids(settings, start_at)
    assert len(made) == CHANGES
    messages = read_topic(settings, settings.topic_for("orders"))
    in_kafka = [m["change_id"] for m in messages if m["op"] in events.STREAMED_OPERATIONS]
    assert set(in_kafka) == made, f"missing {len(made - set(in_kafka))}, unexpected {len(set(in_kafka) - made)}"
    # Re-sent events are recognisable: same change_id, same content.
    by_id: dict[str, dict] = {}
    for m in messages:
        body = {k: v for k, v in m.items() if k not in ("captured_at_ms", "partition")}
        assert by_id.setdefault(m["change_id"], body) == body
    assert replay(messages) == mongo_state(settings)


@pytest.fixture(scope="module")
def tiny_oplog(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A second MongoDB whose history keeps only 200 entries (pruned every 1000 writes)."""
    base = tmp_path_factory.mktemp("tiny-oplog")
    settings = stack.replace(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/", stack_dir=base)
    print(servers.start_mongo(settings, ("--oplog-max-entries", "200")))
    yield settings
    print(servers.stop_mongo(settings))


def test_lost_history_stops_with_advice_or_resnapshots(tiny_oplog: Settings, tmp_path: Path) -> None:
    settings = tiny_oplog.replace(mongo_db="lost", topic_prefix="lost", state_dir=tmp_path / "state")
    db = connect_mongo(settings)[settings.mongo_db]
    generator = OrderGenerator(db["orders"], seed=2)
    generator.run(50)
    drain(settings)
    generator.run(1500)  # the stored token's history is pruned meanwhile

    with pytest.raises(RuntimeError, match="--snapshot when_needed"):
        drain(settings, snapshot="never")
    listener = drain(settings, snapshot="when_needed")
    assert listener.stats.resnapshots == 1
    assert replay(read_topic(settings, settings.topic_for("orders"))) == mongo_state(settings)


def test_snapshot_with_concurrent_writes_replays_to_the_source(settings: Settings) -> None:
    db = connect_mongo(settings)[settings.mongo_db]
    OrderGenerator(db["orders"], seed=4).run(10)
    db["orders"].insert_many([{"order_id": f"bulk-{i:05d}", "status": "created", "amount": i} for i in range(4000)])
    listener = ChangeStreamListener(settings, snapshot_mode="initial")
    follower = threading.Thread(target=listener.run, daemon=True)
    follower.start()
    OrderGenerator(db["orders"], seed=6).run(1500)  # while the copy runs
    topic = settings.topic_for("orders")
    source = mongo_state(settings)
    try:
        wait_for(lambda: replay(read_topic(settings, topic)) == source, 120, "Kafka to replay to MongoDB's state")
    finally:
        listener.request_stop()
        follower.join(30)
        listener.close()
    assert listener.stats.snapshots >= 4000


def test_poison_document_goes_to_dead_letter_and_the_stream_goes_on(settings: Settings) -> None:
    db = connect_mongo(settings)[settings.mongo_db]
    drain(settings)
    db["orders"].insert_one({"order_id": "huge", "blob": "x" * 1_500_000})  # over Kafka's 1 MB message limit
    db["orders"].insert_one({"order_id": "fine"})
    listener = drain(settings)
    assert listener.stats.dead_lettered == 1
    dead = read_topic(settings, settings.dead_letter_topic)
    assert len(dead) == 1 and dead[0]["key"] == "huge" and "exceeds max_request_size" in dead[0]["reason"]
    orders = read_topic(settings, settings.topic_for("orders"))
    assert [m["key"] for m in orders if m["op"] in events.STREAMED_OPERATIONS] == ["fine"]


def test_several_collections_from_one_listener(settings: Settings) -> None:
    settings = settings.replace(collections=("orders", "customers", "products"))
    db = connect_mongo(settings)[settings.mongo_db]
    OrderGenerator.for_database(db, settings.collections, seed=8).run(400)
    drain(settings)
    for name in settings.collections:
        messages = read_topic(settings, settings.topic_for(name))
        assert messages and {m["collection"] for m in messages} == {name}
        assert replay(messages) == mongo_state(settings, name)
        if name != "orders":  # no order_id: keyed by _id
            streamed = [m for m in messages if m["op"] in events.STREAMED_OPERATIONS]
            assert all(m["kafka_key"] == m["key"] == m["doc_id"] for m in streamed)


def test_sigterm_flushes_and_exits_zero(settings: Settings, tmp_path: Path) -> None:
    db = connect_mongo(settings)[settings.mongo_db]
    log = tmp_path / "producer.log"
    producer = start_cli(settings, log, "produce")
    wait_for(lambda: published(settings) >= 0, 60, "the producer's first checkpoint")
    OrderGenerator(db["orders"], seed=1).run(300)
    expected = 300 + len(settings.collections)  # the changes, after the (empty) snapshot's snapshot_end markers
    wait_for(lambda: published(settings) >= expected, 60, "every change acknowledged")
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(60) == 0, log.read_text()[-3000:]
    assert f"producer stopped: {expected} events published" in log.read_text()
    assert json.loads(settings.producer_checkpoint.read_text())["events_published"] == expected
