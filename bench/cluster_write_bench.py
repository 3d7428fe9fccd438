"""The lake query on local[2] and on a standalone cluster, on the same input.

The lake query reads Kafka with Spark's own source and writes every table with delta-spark from the
executors: nothing but counts reaches the driver. This drains the same topics (real generator changes,
captured by the producer) with `lakehouse stream --available-now` on each master, from a fresh checkpoint
and lake each time, and reads the job's own batch records: rows, the time to judge and count the batch
(Spark), the time to write its tables, and the lake query's rows/s over its busy time and over the wall.

    make servers && make cluster
    .venv/bin/python bench/cluster_write_bench.py --changes 40000 --masters local[2],spark://127.0.0.1:7077
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakehouse.adapters.kafka import delete_topics, end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import batches
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.generator import OrderGenerator
from producer.listener import ChangeStreamListener


def drain(settings: Settings, master: str, folder: Path, max_rows: int) -> dict[str, float]:
    run = settings.replace(spark_master=master, state_dir=folder / "state", lake_path=folder / "lake",
                           warehouse_path=folder / "wh.duckdb", max_rows_per_batch=max_rows,
                           streaming_metrics_port=0)
    env = {**os.environ, **run.to_env()}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lakehouse.app.cli", "stream", "--available-now"], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"stream on {master} failed:\n{done.stderr[-3000:]}")
    records = [r for r in batches.read(run.batch_metrics) if r.input_rows]
    rows = sum(r.input_rows for r in records)
    busy = sum(r.duration_ms for r in records) / 1000
    spark = sum(r.spark_ms for r in records) / 1000
    return {"batches": len(records), "rows": rows, "wall_s": wall, "lake_rows_per_s": rows / busy,
            "spark_s": spark, "write_s": busy - spark, "wall_rows_per_s": rows / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=40_000)
    parser.add_argument("--masters", default="local[2],spark://127.0.0.1:7077")
    parser.add_argument("--max-rows", type=int, default=None, help="MAX_ROWS_PER_BATCH (default: the setting's)")
    args = parser.parse_args()
    configure("WARNING", "plain")
    base = Settings.from_env()
    name = f"wb{int(time.time())}"
    capture = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    settings = base.replace(mongo_db=name, topic_prefix=name, state_dir=capture / "state")
    max_rows = args.max_rows or base.max_rows_per_batch
    client = connect_mongo(settings)
    try:
        listener = ChangeStreamListener(settings)
        listener.run(until_idle=True)
        OrderGenerator.for_database(client[name], settings.collections, seed=9).run(args.changes)
        listener.run(until_idle=True)
        listener.close()
        print(f"{sum(end_offsets(settings, settings.topics).values()):,} events in Kafka; MAX_ROWS_PER_BATCH "
              f"{max_rows:,}")
        print("| master | batches | rows | lake query rows/s | judge and count s | write s | wall s (start-up "
              "incl.) | rows/s over the wall |")
        print("|---|---|---|---|---|---|---|---|")
        for master in args.masters.split(","):
            with tempfile.TemporaryDirectory() as folder:
                f = drain(settings, master, Path(folder), max_rows)
            print(f"| {master} | {f['batches']:.0f} | {f['rows']:,.0f} | {f['lake_rows_per_s']:,.0f} | "
                  f"{f['spark_s']:.1f} | {f['write_s']:.1f} | {f['wall_s']:.0f} | {f['wall_rows_per_s']:,.0f} |",
                  flush=True)
    finally:
        delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
        client.drop_database(name)
        client.close()


if __name__ == "__main__":
    main()
