import json

from kafka import KafkaProducer
from pymongo import MongoClient

from lakehouse.adapters.kafka import ensure_topics
from lakehouse.contracts import tables
from lakehouse.contracts.events import SCHEMA_VERSION
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener
from streaming.amounts import is_high_value, parse_amount, parse_thresholds
from tests.helpers import lake_rows, stream_lake


def test_bad_messages_are_quarantined_and_reruns_add_nothing(spark: object, settings: Settings) -> None:
    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    OrderGenerator(orders, seed=3).run(300)
    listener = ChangeStreamListener(settings)
    listener.run(until_idle=True)
    published = listener.stats.published
    listener.close()

    topic = settings.topic_for("orders")
    ensure_topics(settings, [topic])
    bad = [b"{not json", b"", json.dumps({"op": "insert"}).encode(),
           json.dumps({"change_id": "x", "op": "explode", "db": "d", "collection": "orders", "doc_id": "1",
                       "cluster_time_s": 1}).encode(),
           json.dumps({"change_id": "y", "op": "insert", "db": "d", "collection": "orders", "doc_id": "1",
                       "cluster_time_s": 1, "cluster_time_inc": "not a number"}).encode(),
           json.dumps({"schema_version": 1, "change_id": "z", "op": "insert", "db": "d", "collection": "orders",
                       "doc_id": "1", "cluster_time_s": 1, "cluster_time_inc": 0, "txn_op_index": 0}).encode()]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for value in bad:
        producer.send(topic, key=b"bad", value=value)
    producer.flush()
    producer.close()

    stream_lake(spark, settings)
    stream_lake(spark, settings)  # nothing new: must not write anything again

    silver = lake_rows(settings, tables.SILVER)
    assert len(silver) == published
    assert len({r["change_id"] for r in silver}) == published
    reasons = sorted(r["quarantine_reason"] for r in lake_rows(settings, tables.QUARANTINE))
    assert len(reasons) == len(bad)
    assert any(r == "malformed JSON" for r in reasons), reasons
    assert any(r == "empty message value" for r in reasons), reasons
    assert any(r.startswith("missing required field(s): change_id") for r in reasons), reasons
    assert any(r == "unknown op explode" for r in reasons), reasons
    assert f"field(s) of the wrong type for envelope schema v{SCHEMA_VERSION}: cluster_time_inc" in reasons, reasons
    assert any(r.startswith("schema_version 1 is a development build's envelope") for r in reasons), reasons
    assert len(lake_rows(settings, tables.BRONZE)) == published + len(bad)
    parquet_rows = sum(1 for _ in settings.parquet_silver_path.rglob("*.parquet"))
    assert parquet_rows >= 1

    # The UDFs in Spark give exactly what the tested pure rules give, row by row.
    thresholds = parse_thresholds(settings.high_value_thresholds)
    with_amount = [r for r in silver if r["amount_raw"] is not None]
    assert with_amount and any(r["amount"] is not None for r in with_amount)
    assert any(r["amount_error"] == "empty amount" for r in with_amount)
    for r in with_amount:
        expected = parse_amount(r["amount_raw"], r["currency"])
        assert (r["amount"], r["amount_currency"], r["amount_error"]) == tuple(expected), r
        assert r["is_high_value"] == is_high_value(expected.value, expected.currency, thresholds), r


def test_schema_evolution_mid_stream_keeps_running_and_says_what_happened(spark: object, settings: Settings) -> None:
    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    listener = ChangeStreamListener(settings)
    OrderGenerator(orders, seed=5).run(50)
    listener.run(until_idle=True)
    stream_lake(spark, settings)
    before = len(lake_rows(settings, tables.SILVER))

    # A newer producer adds a field, and another changes a field's type; a producer of the release before
    # still sends envelope v2, whose key field was `order_id`; then normal traffic goes on.
    template = json.loads(json.dumps(lake_rows(settings, tables.SILVER)[0], default=str))
    envelope = {k: template[k] for k in ("schema_version", "op", "db", "collection", "doc_id", "key",
                                         "full_document", "cluster_time_s", "cluster_time_inc", "txn_op_index")}
    older = {**{k: v for k, v in envelope.items() if k != "key"}, "schema_version": 2, "order_id": "ord-v2"}
    evolved = [
        {**envelope, "change_id": "new-field", "priority": "high", "tags": ["a", "b"]},
        {**envelope, "change_id": "new-type", "wall_time_ms": "yesterday"},
        {**older, "change_id": "older-producer"},
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for value in evolved:
        producer.send(settings.topic_for("orders"), key=b"k", value=json.dumps(value).encode())
    producer.flush()
    producer.close()
    OrderGenerator(orders, seed=6).run(50)
    listener.run(until_idle=True)
    listener.close()
    stream_lake(spark, settings)

    silver = {r["change_id"]: r for r in lake_rows(settings, tables.SILVER)}
    assert json.loads(silver["new-field"]["extra"]) == {"priority": "high", "tags": '["a","b"]'}
    assert "new-type" not in silver
    assert (silver["older-producer"]["key"], silver["older-producer"]["extra"]) == ("ord-v2", None)
    reasons = [r["quarantine_reason"] for r in lake_rows(settings, tables.QUARANTINE)]
    assert reasons == [f"field(s) of the wrong type for envelope schema v{SCHEMA_VERSION}: wall_time_ms"]
    assert len(silver) > before + 1  # the traffic after the change went through
    metrics = [json.loads(line) for line in settings.batch_metrics.read_text().splitlines()]
    assert ["priority", "tags"] in [m["new_fields"] for m in metrics]


def test_late_events_are_recorded_and_left_out_of_the_windowed_aggregates(spark: object, settings: Settings) -> None:
    import time as clock
    from decimal import Decimal

    from streaming.aggregates import ORDER_STATES, start_aggregates

    settings = settings.replace(watermark_delay="1 minute")
    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    listener = ChangeStreamListener(settings)
    listener.run(until_idle=True)
    OrderGenerator(orders, seed=9).run(200)
    listener.run(until_idle=True)
    listener.close()

    def aggregate() -> None:
        for query in start_aggregates(spark, settings, available_now=True):  # type: ignore[arg-type]
            query.awaitTermination(300)
            assert query.exception() is None, query.exception()

    stream_lake(spark, settings)
    aggregate()

    now = int(clock.time())
    template = {"schema_version": 2, "op": "insert", "db": settings.mongo_db, "collection": "orders",
                "txn_op_index": 0, "cluster_time_inc": 1}
    doc = json.dumps({"order_id": "x", "customer_id": "c", "status": "paid", "amount": "$5.00", "currency": "USD"})
    injected = [
        {**template, "change_id": "late", "doc_id": "late", "cluster_time_s": now - 3600, "full_document": doc},
        {**template, "change_id": "tick", "doc_id": "tick", "cluster_time_s": now + 3 * 3600, "full_document": doc},
    ]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    for value in injected:
        producer.send(settings.topic_for("orders"), key=b"k", value=json.dumps(value).encode())
    producer.flush()
    producer.close()
    stream_lake(spark, settings)
    aggregate()

    silver = lake_rows(settings, tables.SILVER)
    assert {"late", "tick"} <= {r["change_id"] for r in silver}  # late is not lost
    late = lake_rows(settings, tables.LATE_EVENTS)
    assert [r["change_id"] for r in late] == ["late"] and late[0]["watermark"] is not None
    metrics = [json.loads(line) for line in settings.batch_metrics.read_text().splitlines()]
    assert sum(m["late"] for m in metrics) == 1

    counted = [r for r in silver if r["op"] in ORDER_STATES and r["change_id"] not in ("late", "tick")]
    aggregates = lake_rows(settings, tables.AGGREGATES)
    for granularity in ("1m", "1h"):
        rows = [a for a in aggregates if a["granularity"] == granularity]
        assert sum(a["order_count"] for a in rows) == len(counted), granularity
        revenue = sum((a["revenue"] or Decimal(0)) for a in rows)
        assert revenue == sum((r["amount"] or Decimal(0)) for r in counted), granularity
        assert sum(a["high_value_changes"] or 0 for a in rows) == sum(1 for r in counted if r["is_high_value"])


def test_a_checkpoint_of_the_earlier_python_kafka_source_is_carried_on_by_sparks_source(spark: object,
                                                                                      settings: Settings) -> None:
    """A lake whose checkpoint the earlier Python source wrote ({"topic:partition": [offset, fingerprint]})
    goes on where it stopped: every offset in the lake once, nothing read twice, no traceback."""
    from lakehouse.contracts.positions import read_offsets

    orders = MongoClient(settings.mongo_uri, tz_aware=True)[settings.mongo_db]["orders"]
    OrderGenerator(orders, seed=5).run(100)
    first = ChangeStreamListener(settings)
    first.run(until_idle=True)
    first.close()
    stream_lake(spark, settings)
    # The checkpoint as the earlier source left it.
    checkpoint = settings.spark_checkpoint
    for path in (checkpoint / "offsets").glob("[0-9]*"):
        lines = path.read_text().splitlines()
        lines[2] = json.dumps({key: [offset, f"{offset - 1}:0:0"] for key, offset in read_offsets(lines[2]).items()})
        path.write_text("\n".join(lines))
    for crc in (checkpoint / "offsets").glob(".*.crc"):
        crc.unlink()
    OrderGenerator(orders, seed=6).run(100)
    second = ChangeStreamListener(settings)
    second.run(until_idle=True)
    second.close()
    stream_lake(spark, settings)
    bronze = lake_rows(settings, tables.BRONZE)
    coordinates = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in bronze]
    # The listener's count carries on from its checkpoint: the second's is every event published so far.
    assert first.stats.published < second.stats.published
    assert len(coordinates) == len(set(coordinates)) == second.stats.published
