"""The streaming job on a real Spark standalone cluster (a master and two workers from the installed
pyspark, started by infra/servers.py): executors in the workers' own JVMs and Python workers, nothing
shared with the driver but the lake and checkpoint folders. One worker is SIGKILLed mid-stream, as a
lost node; every Kafka offset still reaches the lake exactly once."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import servers
from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener
from tests.conftest import wait_for
from tests.helpers import free_port, lake_rows, start_cli

# Minutes of kills (make chaos runs it; make test does not).
pytestmark = pytest.mark.faults


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    on_cluster = settings.replace(spark_master=f"spark://127.0.0.1:{free_port()}", stack_dir=tmp_path / "cluster",
                                  max_rows_per_batch=200, trigger_seconds=0.5, streaming_metrics_port=0)
    try:
        for line in servers.start_spark_cluster(on_cluster, webui_port=free_port()):
            print(line)
        yield on_cluster
    finally:
        for line in servers.stop_spark_cluster(on_cluster):
            print(line)


def batches_done(settings: Settings) -> int:
    path = settings.batch_metrics
    return sum(1 for line in path.read_text().splitlines() if json.loads(line)["input_rows"]) if path.exists() else 0


def in_lake(settings: Settings) -> int:
    try:
        return len(lake_rows(settings, tables.SILVER)) + len(lake_rows(settings, tables.QUARANTINE))
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_the_streaming_job_on_a_cluster_loses_a_worker_and_writes_every_offset_once(cluster: Settings,
                                                                                      tmp_path: Path) -> None:
    settings = cluster
    assert servers.cluster_workers_alive(settings) == 2
    listener = ChangeStreamListener(settings)
    listener.run(until_idle=True)
    OrderGenerator.for_database(connect_mongo(settings)[settings.mongo_db], settings.collections, seed=16).run(1500)
    listener.run(until_idle=True)
    listener.close()
    total = sum(end_offsets(settings, settings.topics).values())

    log = tmp_path / "stream.log"
    job = start_cli(settings, log, "stream")
    try:
        wait_for(lambda: batches_done(settings) >= 2, 600, "two batches of the lake query on the cluster")
        assert in_lake(settings) < total, "the lake was complete before the worker was lost: nothing was tested"
        print(servers.kill_spark_worker(settings, 1))
        wait_for(lambda: servers.cluster_workers_alive(settings) == 1, 120, "the master to see the worker gone")
        wait_for(lambda: in_lake(settings) >= total, 600, f"all {total} Kafka offsets in the lake")
        assert job.poll() is None, log.read_text()[-3000:]
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(120)

    silver = lake_rows(settings, tables.SILVER)
    quarantined = lake_rows(settings, tables.QUARANTINE)
    seen = [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in silver + quarantined]
    assert len(seen) == len(set(seen)) == total, "an offset is missing or was written twice"
    assert not quarantined
    assert len({r["change_id"] for r in silver}) == len(silver)
    # The work ran in both workers' executors (each an application folder in its work dir).
    for n in (1, 2):
        assert list((settings.stack_dir / "spark" / f"work-{n}").glob("app-*")), f"worker {n} ran no executor"
