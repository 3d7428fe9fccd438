"""The streaming job under faults: kills at several points of every query's first batches leave
checkpoints it restarts from by itself; SIGTERM to its process group finishes and exits 0; on an
empty lake every table exists and the aggregates read the right columns."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer

from lakehouse.adapters.kafka import end_offsets, ensure_topics
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from tests.conftest import wait_for
from tests.helpers import drain, lake_rows, start_cli, stream_lake


def tick(settings: Settings, hours_ahead: int = 3) -> None:
    """One valid change far in the future: the watermark passes every window before it."""
    now = int(time.time())
    doc = json.dumps({"order_id": "tick", "customer_id": "c", "status": "paid", "amount": "$1.00", "currency": "USD"})
    event = {"schema_version": 2, "op": "insert", "db": settings.mongo_db, "collection": "orders", "txn_op_index": 0,
             "cluster_time_inc": 1, "change_id": f"tick-{now}", "doc_id": "tick", "key": "tick",
             "cluster_time_s": now + hours_ahead * 3600, "full_document": doc}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    producer.send(settings.topic_for("orders"), key=b"tick", value=json.dumps(event).encode())
    producer.flush()
    producer.close()


def expected_windows(silver: list[dict], granularity: str) -> dict[tuple, tuple[int, Decimal]]:
    from streaming.aggregates import ORDER_STATES

    size = 60 if granularity == "1m" else 3600
    out: dict[tuple, tuple[int, Decimal]] = {}
    for r in silver:
        if r["op"] not in ORDER_STATES or r["doc_id"] == "tick":
            continue
        start = int(r["event_time"].timestamp()) // size * size
        count, revenue = out.get((start, r["status"]), (0, Decimal(0)))
        out[(start, r["status"])] = (count + 1, revenue + (r["amount"] or Decimal(0)))
    return out


def test_on_an_empty_lake_every_table_exists_and_the_aggregates_read_the_right_columns(
        spark: object, settings: Settings) -> None:
    from streaming.aggregates import start_aggregates
    from streaming.job import ensure_lake_tables

    settings = settings.replace(watermark_delay="1 second")
    ensure_lake_tables(settings)
    for name, schema in tables.lake_schemas(tables.attribute_columns(settings)).items():
        table = DeltaTable(str(settings.table_path(name)))
        assert table.to_pyarrow_table().num_rows == 0 and table.schema().to_arrow().names == schema.names, name

    # The aggregates start while silver's Parquet folder is still empty, as on a fresh lake.
    queries = start_aggregates(spark, settings, available_now=False)  # type: ignore[arg-type]
    try:
        OrderGenerator(connect_mongo(settings)[settings.mongo_db]["orders"], seed=21).run(120)
        drain(settings)
        stream_lake(spark, settings)
        tick(settings)
        stream_lake(spark, settings)
        silver = lake_rows(settings, tables.SILVER)
        want = {g: expected_windows(silver, g) for g in tables.WINDOWS}

        def written() -> bool:
            got = lake_rows(settings, tables.AGGREGATES)
            return all(sum(1 for a in got if a["granularity"] == g) >= len(want[g]) for g in want)

        wait_for(lambda: any(q.exception() for q in queries) or written(), 240, "the windows to be written")
        assert not any(q.exception() for q in queries), [str(q.exception()) for q in queries]
    finally:
        for query in queries:
            query.stop()
    aggregates = lake_rows(settings, tables.AGGREGATES)
    assert list(aggregates[0]) == [name for name, _ in tables.AGGREGATES_COLUMNS]
    for granularity, windows in want.items():
        got = {(int(a["window_start"].timestamp()), a["status"]): (a["order_count"], a["revenue"] or Decimal(0))
               for a in aggregates if a["granularity"] == granularity}
        assert got == windows, granularity
        assert all(a["status"] in ("created", "paid", "shipped", "delivered", "cancelled") for a in aggregates)


def kill_when(job, condition: Callable[[], bool], what: str) -> None:  # noqa: ANN001
    """SIGKILL the job's process group (driver and JVM) as soon as `condition` holds."""
    deadline = time.monotonic() + 240
    while not condition():
        assert job.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(30)


def planned(checkpoint: Path) -> bool:
    return any((checkpoint / "offsets").glob("[0-9]*"))


def committed(checkpoint: Path) -> bool:
    return any((checkpoint / "commits").glob("[0-9]*"))


@pytest.mark.faults
def test_kills_in_every_query_first_batches_then_restart_by_itself_and_sigterm_exits_zero(
        settings: Settings, tmp_path: Path) -> None:
    settings = settings.replace(max_rows_per_batch=200, trigger_seconds=0.5, watermark_delay="1 second")
    ensure_topics(settings, settings.topics)
    OrderGenerator(connect_mongo(settings)[settings.mongo_db]["orders"], seed=31).run(600)
    drain(settings)
    tick(settings)
    total = sum(end_offsets(settings, settings.topics).values())
    lake, one_minute = settings.spark_checkpoint, settings.aggregates_checkpoint / "1m"
    one_hour = settings.aggregates_checkpoint / "1h"
    kill_points = [
        (lambda: (lake / "metadata").exists(), "the lake query's checkpoint is created"),
        (lambda: planned(lake) and not committed(lake), "the lake query's first batch is planned"),
        # Delta's streaming source keeps nothing under sources/ (the earlier file source did): the query's
        # checkpoint is created, its first batch not yet planned.
        (lambda: (one_minute / "metadata").exists() and not planned(one_minute),
         "the 1m aggregates' query has started but planned no batch"),
        (lambda: planned(one_hour) and not committed(one_hour), "the 1h aggregates' first batch is planned"),
    ]
    log = tmp_path / "stream.log"
    for condition, what in kill_points:
        job = start_cli(settings, log, "stream")
        kill_when(job, condition, what)

    job = start_cli(settings, log, "stream")
    try:
        def caught_up() -> bool:
            assert job.poll() is None, log.read_text()[-4000:]
            bronze = lake_rows(settings, tables.BRONZE)
            seen = {(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in bronze}
            windows = {a["granularity"] for a in lake_rows(settings, tables.AGGREGATES)}
            return len(seen) == total and windows == {"1m", "1h"}

        wait_for(caught_up, 400, "every offset in the lake and both aggregates written")
    finally:
        os.killpg(job.pid, signal.SIGTERM)  # the whole group, as a service manager does
        code = job.wait(120)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "Cannot call methods on a stopped SparkContext" not in text
    bronze = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in lake_rows(settings, tables.BRONZE)]
    silver = lake_rows(settings, tables.SILVER) + lake_rows(settings, tables.QUARANTINE)
    assert len(bronze) == len(set(bronze)) == total, "an offset is missing or was written twice"
    assert len(silver) == total
