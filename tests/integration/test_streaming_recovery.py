"""Kill the streaming job (driver and JVM) with SIGKILL mid-stream; after a restart every Kafka offset
is in the lake exactly once, and the stateful queries over it (inventory alerts, the enriched lines and
revenue by category) hold every row once: no alert emitted twice or lost."""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener
from streaming import inventory
from streaming.enrichment import order_items
from streaming.inventory import crossings
from tests.conftest import wait_for
from tests.helpers import lake_rows, start_cli

# Minutes of kills (make chaos runs it; make test does not).
pytestmark = pytest.mark.faults


def batches_done(settings: Settings) -> int:
    path = settings.batch_metrics
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_mid_stream_then_restart_reflects_every_offset_once(settings: Settings, tmp_path: Path) -> None:
    """Property: a job SIGKILLed mid-stream, once after two lake batches and once after the alerts query's
    first commit, and then run to the end, writes every Kafka offset to the lake once and every alert,
    enriched line and revenue window once. Six batches are enough: each costs 10-30 s here, whatever its size."""
    settings = settings.replace(max_rows_per_batch=150, trigger_seconds=0.5)
    listener = ChangeStreamListener(settings)
    listener.run(until_idle=True)  # an empty snapshot: what follows is streamed, change by change
    OrderGenerator.for_database(connect_mongo(settings)[settings.mongo_db], settings.collections, seed=12).run(900)
    listener.run(until_idle=True)
    listener.close()
    offsets = end_offsets(settings, settings.topics)
    total = sum(offsets.values())

    log = tmp_path / "stream.log"
    alerts_committed = inventory.checkpoint(settings) / "commits"
    for kill_after, alert_batches in ((2, 0), (4, 1)):
        job = start_cli(settings, log, "stream")
        wait_for(lambda k=kill_after, a=alert_batches: batches_done(settings) >= k and (
            a == 0 or len(list(alerts_committed.glob("[0-9]*"))) >= a), 300,
                 f"{kill_after} batches (and {alert_batches} of the alerts query) before the kill")
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    job = start_cli(settings, log, "stream", "--available-now")
    assert job.wait(300) == 0, log.read_text()[-3000:]

    silver = lake_rows(settings, tables.SILVER)
    quarantined = lake_rows(settings, tables.QUARANTINE)
    bronze = lake_rows(settings, tables.BRONZE)
    seen = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in silver + quarantined]
    assert len(seen) == len(set(seen)) == total, "an offset is missing or was written twice"
    assert len(bronze) == total
    assert len({r["change_id"] for r in silver}) == len(silver)
    # The read limit split the work into batches of at most 150 rows.
    lines = [json.loads(line) for line in settings.batch_metrics.read_text().splitlines()]
    assert max(line["input_rows"] for line in lines) <= 150
    assert sum(1 for line in lines if line["input_rows"]) >= total // 150

    history: dict[str, list[dict]] = defaultdict(list)
    for row in silver:
        if row["collection"] == "products" and row["op"] != "delete" and row["stock"] is not None:
            history[row["doc_id"]].append(row)
    expected = sorted((a["change_id"], a["level"]) for changes in history.values()
                      for a in crossings(changes, None, settings.inventory_low, settings.inventory_critical)[0])
    alerts = sorted((a["change_id"], a["level"]) for a in lake_rows(settings, tables.INVENTORY_ALERTS))
    assert alerts == expected and len(expected) > 0, "an alert is missing or was written twice"
    lines_written = [(r["change_id"], r["sku"], r["qty"]) for r in lake_rows(settings, tables.ORDER_LINES)]
    placed = [r for r in silver if r["collection"] == "orders" and r["op"] == "insert"]
    assert len({c for c, _, _ in lines_written}) == len(placed)
    assert sum(len(order_items(json.loads(r["full_document"]))) for r in placed) == len(lines_written)
    windows = [(r["granularity"], r["window_start"], r["category"], r["currency"])
               for r in lake_rows(settings, tables.REVENUE_BY_CATEGORY)]
    assert len(windows) == len(set(windows))
