"""The pipeline converges on its own: a broker that loses acknowledged records, a reader holding the
warehouse, a warehouse that drifted from MongoDB."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from lakehouse.adapters.kafka import end_offsets, ensure_topics, recreate_topics
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.app.reconcile import reconcile
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.checkpoint import FileCheckpointStore, shortfall
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import drain, lake_rows, mongo_state, read_topic, replay, start_cli, stream_lake
from warehouse.loader import load


def bronze(settings: Settings) -> list[dict]:
    return lake_rows(settings, tables.BRONZE)


def test_producer_finds_records_the_broker_lost_and_publishes_them_again(settings: Settings) -> None:
    """The broker loses everything it acknowledged (the topic deleted and re-created, as an operator or
    an unclean election can do): on its next start the producer finds fewer records than it had
    acknowledged, has no checkpoint the broker still holds, and copies everything again."""
    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    OrderGenerator(orders, seed=41).run(300)
    drain(settings, snapshot="when_needed")
    acked = FileCheckpointStore(settings.producer_checkpoint).load().acked_offsets
    assert sum(acked.values()) > 0
    recreate_topic(settings, 0)
    OrderGenerator(orders, seed=42).run(50)  # changes made while the broker had lost the rest

    listener = drain(settings, snapshot="when_needed")
    assert listener.stats.kafka_losses == 1 and listener.stats.resnapshots == 1
    assert replay(read_topic(settings, settings.topic_for("orders"))) == mongo_state(settings)
    acked = FileCheckpointStore(settings.producer_checkpoint).load().acked_offsets
    held = {f"{t}:{p}": o for (t, p), o in end_offsets(settings, settings.topics).items()}
    assert not shortfall(acked, held)
    # Started without --snapshot when_needed, the producer stops with what to do instead.
    recreate_topic(settings, 0)
    with pytest.raises(RuntimeError, match="when_needed"):
        drain(settings, snapshot="initial")


def recreate_topic(settings: Settings, records: int) -> None:
    """The topic deleted and created again, then `records` new changes of a fresh producer run."""
    topic = settings.topic_for("orders")
    recreate_topics(settings, [topic], timeout=30)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    template = {"schema_version": 2, "op": "insert", "db": settings.mongo_db, "collection": "orders",
                "txn_op_index": 0, "cluster_time_inc": 0, "full_document": json.dumps({"status": "created"})}
    for n in range(records):
        event = {**template, "change_id": f"new-{n}", "doc_id": f"new-{n}", "cluster_time_s": int(time.time())}
        producer.send(topic, key=f"new-{n}".encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()


@pytest.mark.parametrize("after", [60, 900])
def test_streaming_job_records_lost_data_and_goes_on_with_what_the_broker_holds(spark: object, settings: Settings,
                                                                                after: int) -> None:
    """After the topic is re-created the broker holds fewer records (60) or, at re-used offsets, more (900)
    than the query had read. Spark's Kafka source goes on from its position (or the new end), skipping the
    new records below it; the data-loss watch records exactly those: every new record is either in the
    lake or inside a recorded loss (which reconcile repairs), none in both."""
    ensure_topics(settings, settings.topics)
    OrderGenerator(connect_mongo(settings)[settings.mongo_db]["orders"], seed=42).run(300)
    drain(settings)
    stream_lake(spark, settings)
    recreate_topic(settings, after)
    stream_lake(spark, settings)

    topic = settings.topic_for("orders")
    new = [r for r in bronze(settings) if '"new-' in r["raw_value"]]
    losses = [json.loads(line) for line in settings.data_loss_log.read_text().splitlines()]
    assert losses and all(loss["topic"] == topic for loss in losses)
    skipped = {(loss["partition"], offset) for loss in losses for offset in range(loss["from"], loss["to"])}
    read = {(r["kafka_partition"], r["kafka_offset"]) for r in new}
    assert not skipped & read, "a record the lake holds was recorded as lost"
    assert len(skipped) + len(read) == after, (len(skipped), len(read), losses)
    report = CliRunner().invoke(cli, ["status"], env=settings.to_env())
    assert "DATA LOSS" in report.output, report.output

    # failOnDataLoss=true stops the query instead, naming the partition.
    from streaming.job import start

    recreate_topic(settings, 10)
    query = start(spark, settings.replace(kafka_fail_on_data_loss=True), available_now=True)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="(?i)no longer holds records|data may have been lost"):
        query.awaitTermination(300)


def test_loader_service_waits_while_a_reader_holds_the_warehouse(spark: object, settings: Settings,
                                                                 tmp_path: Path) -> None:
    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    OrderGenerator(orders, seed=43).run(100)
    drain(settings)
    stream_lake(spark, settings)
    load(settings)
    log = tmp_path / "loader.log"
    loader = start_cli(settings, log, "load", "--every", "0.5")
    reader = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; "
                               "con = duckdb.connect(sys.argv[1], read_only=True); print('holding', flush=True); "
                               "time.sleep(10)", str(settings.warehouse_path)], stdout=subprocess.PIPE)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == b"holding"
        OrderGenerator(orders, seed=44).run(100)  # new changes arrive while the reader holds the file
        drain(settings)
        stream_lake(spark, settings)
        wait_for(lambda: "held by another process" in log.read_text(), 30, "the loader to find the file held")
        assert reader.wait(30) == 0
        wait_for(lambda: reconcile(settings, "orders").ok, 120, "the loader to load after the reader let go")
        assert loader.poll() is None, log.read_text()
    finally:
        loader.terminate()
        loader.wait(30)
    assert loader.returncode == 0, log.read_text()
    assert "loader stopped" in log.read_text()


def test_reconcile_repair_turns_differences_into_events_and_the_warehouse_converges(spark: object,
                                                                                    settings: Settings) -> None:
    db = connect_mongo(settings)[settings.mongo_db]
    OrderGenerator(db["orders"], seed=45).run(200)
    drain(settings)
    stream_lake(spark, settings)
    load(settings)
    assert reconcile(settings, "orders").ok
    # The warehouse drifts: a row lost, a row MongoDB never had, a row with other content.
    con = duckdb.connect(str(settings.warehouse_path))
    victim, changed = [r[0] for r in con.execute("SELECT doc_id FROM orders ORDER BY doc_id LIMIT 2").fetchall()]
    con.execute("DELETE FROM orders WHERE doc_id = ?", [victim])
    con.execute("UPDATE orders SET document = replace(document, '\"status\"', '\"was_status\"') WHERE doc_id = ?",
                [changed])
    con.execute("INSERT INTO orders SELECT 'ghost' AS doc_id, * EXCLUDE (doc_id) FROM orders WHERE doc_id = ?",
                [changed])
    con.execute("UPDATE orders SET document = '{\"_id\": \"ghost\"}' WHERE doc_id = 'ghost'")
    con.close()

    result = CliRunner().invoke(cli, ["reconcile", "--repair"], env=settings.to_env())
    assert "missing=1 extra=1 mismatched=1" in result.output, result.output
    assert "published 3 repair events" in result.output and result.exit_code == 0, result.output
    stream_lake(spark, settings)
    load(settings)
    assert reconcile(settings, "orders").ok, reconcile(settings, "orders").line()
    status = json.loads(CliRunner().invoke(cli, ["status", "--json"], env=settings.to_env()).output)
    assert status["reconcile"]["repaired"] == 3


@pytest.mark.parametrize(("changes", "says"), [
    ({"kafka_replication_factor": 3}, "KAFKA_REPLICATION_FACTOR=3: Kafka at"),
    ({"kafka_partitions": 10_000}, "KAFKA_PARTITIONS=10000: Kafka at"),
])
def test_topics_the_broker_cannot_make_are_one_line_naming_the_setting(settings: Settings, changes: dict,
                                                                       says: str) -> None:
    """A replication factor above the brokers there are, or more partitions than the broker takes, is the
    operator's setting to change: one Error line and exit 2, no traceback."""
    env = {"MONGO_URI": settings.mongo_uri, "MONGO_DB": settings.mongo_db, "TOPIC_PREFIX": settings.topic_prefix,
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "STATE_DIR": str(settings.state_dir),
           **{name.upper(): str(value) for name, value in changes.items()}}
    result = CliRunner().invoke(cli, ["produce", "--until-idle"], env=env)
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output, result.output
