"""`lakehouse status` and `lakehouse metrics` against a pipeline that ran, then fell behind."""

from __future__ import annotations

import json
import re
import urllib.request

from click.testing import CliRunner

from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.cli import cli
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import drain, free_port, start_cli, stream_lake
from warehouse.loader import load


def status(settings: Settings) -> dict:
    result = CliRunner().invoke(cli, ["status", "--json"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_status_and_metrics_follow_the_pipeline(spark: object, settings: Settings) -> None:
    client = connect_mongo(settings)
    generator = OrderGenerator.for_database(client[settings.mongo_db], settings.collections, seed=9)
    generator.run(120)
    drain(settings)
    stream_lake(spark, settings)
    load(settings)

    caught_up = status(settings)
    orders = client[settings.mongo_db]["orders"].count_documents({})
    assert caught_up["mongodb"]["collections"]["orders"] == orders
    assert caught_up["producer"]["events_published"] > 0
    assert caught_up["kafka"]["total_lag"] == 0 and caught_up["kafka"]["partitions"]
    assert caught_up["spark"]["batches"] >= 1 and caught_up["spark"]["input_rows"] == sum(
        p["end_offset"] for p in caught_up["kafka"]["partitions"])
    assert caught_up["warehouse"]["collections"]["orders"]["current"] == orders
    assert caught_up["warehouse"]["versions_behind"] == 0
    assert caught_up["freshness_seconds"] == 0
    # A row per captured collection (collections.toml): MongoDB's count and the warehouse's current state.
    db = client[settings.mongo_db]
    assert set(caught_up["warehouse"]["collections"]) == set(settings.collections) == {"orders", "customers",
                                                                                         "products"}
    for name in settings.collections:
        assert caught_up["mongodb"]["collections"][name] == db[name].count_documents({}), name
        assert caught_up["warehouse"]["collections"][name]["current"] == db[name].count_documents({}), name

    generator.run(60)
    drain(settings)  # in Kafka, not yet in the lake
    behind = status(settings)
    assert behind["kafka"]["total_lag"] == behind["producer"]["events_published"] - caught_up["producer"][
        "events_published"] > 0

    text = CliRunner().invoke(cli, ["status"], env=settings.to_env()).output
    assert re.search(r"kafka +lag \d+ messages", text) and "warehouse  silver v" in text, text
    assert re.search(r"^ +customers +mongodb \d+, warehouse customers \d+ current", text, re.M), text
    metrics = CliRunner().invoke(cli, ["metrics"], env=settings.to_env()).output
    lag = sum(float(v) for v in re.findall(r"^lakehouse_kafka_lag_messages\{.*\} (\S+)$", metrics, re.M))
    assert lag == behind["kafka"]["total_lag"], metrics
    documents = rf'^lakehouse_warehouse_documents\{{collection="orders"\}} {orders}(\.0)?$'
    assert re.search(documents, metrics, re.M), metrics
    assert re.search(r'^lakehouse_warehouse_changes\{collection="orders"\} [1-9]\d*(\.0)?$', metrics, re.M), metrics
    assert re.search(r'^lakehouse_warehouse_documents\{collection="products"\} \d+(\.0)?$', metrics, re.M), metrics

    port = free_port()
    server = start_cli(settings, settings.state_dir / "metrics.log", "metrics", "--serve", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                    return response.read().decode()
            except OSError:
                return None

        served = wait_for(scrape, 60, f"metrics served at {url}")
        assert "# TYPE lakehouse_kafka_lag_messages gauge" in str(served)
        # the status figures only, each once (the monitor once died on a name it shared with the producer's own)
        assert str(served).count("# TYPE lakehouse_producer_last_change_timestamp_seconds gauge") == 1, served
    finally:
        server.terminate()
        server.wait(30)
    client.close()


def test_the_newest_change_is_when_mongodb_made_it_whatever_a_documents_updated_at_holds(settings: Settings) -> None:
    """An order whose updated_at is a BSON Timestamp (it sorts above every date) made status say MongoDB's
    newest change was in 2023, and freshness 0 s while the warehouse was far behind."""
    from datetime import UTC, datetime

    from bson import Timestamp

    orders = connect_mongo(settings)[settings.mongo_db]["orders"]
    orders.insert_one({"order_id": "o-ts", "updated_at": Timestamp(datetime(2023, 1, 2, tzinfo=UTC), 1)})
    orders.insert_one({"order_id": "o-now", "updated_at": datetime.now(UTC)})
    newest = datetime.strptime(status(settings)["mongodb"]["newest_change"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(newest.replace(tzinfo=UTC).timestamp() - datetime.now(UTC).timestamp()) < 120, newest
