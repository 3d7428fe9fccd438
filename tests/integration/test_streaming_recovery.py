"""Kill the streaming job (driver and JVM) with SIGKILL mid-stream; after a restart every Kafka offset
is in the lake exactly once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from deltalake import DeltaTable

from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener
from tests.conftest import wait_for
from tests.helpers import start_cli


def batches_done(settings: Settings) -> int:
    path = settings.batch_metrics
    return len(path.read_text().splitlines()) if path.exists() else 0


def rows(settings: Settings, name: str) -> list[dict]:
    path = str(settings.table_path(name))
    return DeltaTable(path).to_pyarrow_table().to_pylist() if DeltaTable.is_deltatable(path) else []


def test_kill_9_mid_stream_then_restart_reflects_every_offset_once(settings: Settings, tmp_path: Path) -> None:
    settings = settings.replace(max_rows_per_batch=150, trigger_seconds=0.5)
    listener = ChangeStreamListener(settings)
    listener.run(until_idle=True)  # an empty snapshot: what follows is streamed, change by change
    OrderGenerator(connect_mongo(settings)[settings.mongo_db]["orders"], seed=12).run(1500)
    listener.run(until_idle=True)
    listener.close()
    offsets = end_offsets(settings, settings.topics)
    total = sum(offsets.values())

    log = tmp_path / "stream.log"
    for kill_after in (2, 6):
        job = start_cli(settings, log, "stream")
        wait_for(lambda k=kill_after: batches_done(settings) >= k, 180, f"{kill_after} batches before the kill")
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    job = start_cli(settings, log, "stream", "--available-now")
    assert job.wait(300) == 0, log.read_text()[-3000:]

    silver = rows(settings, tables.SILVER)
    quarantined = rows(settings, tables.QUARANTINE)
    bronze = rows(settings, tables.BRONZE)
    seen = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in silver + quarantined]
    assert len(seen) == len(set(seen)) == total, "an offset is missing or was written twice"
    assert len(bronze) == total
    assert len({r["change_id"] for r in silver}) == len(silver)
    # The read limit split the work into batches of at most 150 rows.
    lines = [json.loads(line) for line in settings.batch_metrics.read_text().splitlines()]
    assert max(line["input_rows"] for line in lines) <= 150
    assert sum(1 for line in lines if line["input_rows"]) >= total // 150
