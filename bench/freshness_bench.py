"""End-to-end freshness: from a change's MongoDB commit to its row in the DuckDB warehouse.

The real chain, each stage its own process as run-all starts them: the producer (`lakehouse produce`),
the streaming job (`lakehouse stream`) and the loader service (`lakehouse load --every POLL`), against
the servers of `make servers`, with this run's own database, topics, lake and warehouse. After a
warm-up change has gone all the way through, orders change at --rate per second for --seconds; once
the warehouse holds every one of them, each change's times are read back:

  MongoDB commit   the change's wallTime (wall_time_ms)
  in Kafka         the record's timestamp (silver kafka_timestamp)            -> capture
  in silver        the commit of the batch's silver append (the Delta commit
                   whose userMetadata marks that batch; the batch's start,
                   ingested_at, when no commit carries a mark)                 -> Kafka -> silver
  in DuckDB        the commit of the load that inserted it (loaded_at is its
                   transaction's start; the loader's load log has the commit) -> silver -> DuckDB

    make servers && .venv/bin/python bench/freshness_bench.py --rate 500 --seconds 60
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from deltalake import DeltaTable

from infra import kafka_broker
from infra.processes import running
from infra.servers import mongo_dir
from lakehouse.adapters.kafka import delete_topics
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.run_all import spawn, stop_all
from lakehouse.contracts import tables
from lakehouse.core.collections import ORDERS
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.generator import OrderGenerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procs import cpu_seconds, tree_cpu_seconds  # noqa: E402


def _parts(settings: Settings, children: list[Any]) -> dict[str, Any]:
    """Each part of the chain's CPU time so far (s), as a function: the servers and each stage's process
    tree (the streaming job's JVM and Python workers are its driver's descendants), and this bench, whose
    generator makes the changes."""
    parts: dict[str, Any] = {}
    for name, pid_file in (("MongoDB", mongo_dir(settings) / "mongod.pid"),
                           ("Kafka", kafka_broker.node_dir(settings, 1) / "kafka.pid")):
        pid = running(pid_file)
        if pid:
            parts[name] = functools.partial(cpu_seconds, pid)
    for child in children:
        parts[child.name] = functools.partial(tree_cpu_seconds, child.process.pid)
    parts["generator"] = lambda: sum(os.times()[:2])
    return parts


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def warehouse_changes(settings: Settings, since_ms: int | None) -> list[tuple[str, int, int]]:
    """(change_id, wall_time_ms, loaded_at in µs) of the orders' changes since `since_ms` (None: all, a
    snapshot's too, which have no wall time); [] while the loader holds the file or there is none yet (a
    brief read-only look, as readers must)."""
    try:
        con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    except duckdb.Error:
        return []
    try:
        return [tuple(r) for r in con.execute(  # type: ignore[misc]
            "SELECT change_id, wall_time_ms, epoch_us(loaded_at) FROM fact_order_changes "
            "WHERE (? IS NULL OR wall_time_ms >= ?) AND op <> 'snapshot_end'", [since_ms, since_ms]).fetchall()]
    except duckdb.Error:
        return []
    finally:
        con.close()


class GaveUp(RuntimeError):
    pass


def wait_for(what: str, condition, timeout: float, children, progress=None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            raise GaveUp(f"gave up waiting for {what} after {timeout:.0f}s" + (f" ({progress()})" if progress else ""))
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="changes per second made in MongoDB")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long changes are made")
    parser.add_argument("--trigger", type=float, default=None, help="the streaming job's trigger (TRIGGER_SECONDS)")
    parser.add_argument("--poll", type=float, default=0.2, help="the loader's look for a new silver version (s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run's state (logs) in this folder")
    args = parser.parse_args()
    configure("WARNING")
    name = f"fresh{int(time.time())}"
    # The run's folder is removed only when it succeeds: a failed run keeps its logs, and says where.
    root = args.keep or Path(tempfile.mkdtemp(prefix="freshness-"))
    try:
        result = _run(args, name, root)
    except (GaveUp, SystemExit) as exc:
        raise SystemExit(f"{exc}; the run's logs and state are kept in {root / 'state'}") from None
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    _report(args, *result)


def _run(args: argparse.Namespace, name: str, root: Path) -> tuple[Any, ...]:
    """Run the chain and follow the changes; what the report needs."""
    overrides: dict[str, object] = {"mongo_db": name, "topic_prefix": name, "collections": (ORDERS,),
                                    "lake_path": root / "lake", "warehouse_path": root / "warehouse.duckdb",
                                    "state_dir": root / "state"}
    if args.trigger is not None:
        overrides["trigger_seconds"] = args.trigger
    settings = Settings.from_env(**overrides)
    client = connect_mongo(settings, "freshness-bench")
    orders = client[name][ORDERS]
    children = []
    try:
        children.append(spawn(settings, "producer", "produce", "--snapshot", "when_needed"))
        children.append(spawn(settings, "streaming", "stream"))
        children.append(spawn(settings, "loader", "load", "--every", str(args.poll)))
        orders.insert_one({"order_id": "warm-up", "status": "created", "amount": "1.00"})
        print("waiting for a warm-up change to reach the warehouse (Spark starts in 10-60 s) ...", flush=True)
        wait_for("the warm-up change", lambda: warehouse_changes(settings, None), 600, children)

        generator = OrderGenerator(orders, seed=3)
        total = int(args.rate * args.seconds)
        started_ms = int(time.time() * 1000)
        print(f"making {total:,} changes at {args.rate:g}/s for {args.seconds:g} s ...", flush=True)
        parts = _parts(settings, children)
        cpu0 = {name: measure() for name, measure in parts.items()}
        t0 = time.monotonic()
        stats = generator.run(total, rate=args.rate)
        made_in = time.monotonic() - t0
        cpu = {name: (measure() - cpu0[name]) / made_in for name, measure in parts.items()}
        # What MongoDB recorded, not what the generator asked for: an update that changes nothing is no change.
        recorded = client["local"]["oplog.rs"].count_documents(
            {"ns": f"{name}.{ORDERS}", "op": {"$in": ["i", "u", "d"]},
             "wall": {"$gte": datetime.fromtimestamp(started_ms / 1000, UTC)}})
        print(f"made {stats.total:,} changes in {made_in:.1f} s ({stats.total / made_in:,.0f}/s), {recorded:,} of "
              "them to orders in MongoDB's oplog; waiting for the warehouse to hold them all ...", flush=True)
        print(f"CPU while the changes were made, in cores of {os.cpu_count()}: "
              + ", ".join(f"{name} {used:.2f}" for name, used in cpu.items()), flush=True)
        wait_for(f"all {recorded:,} changes in the warehouse",
                 lambda: len(warehouse_changes(settings, started_ms)) >= recorded, 300, children,
                 progress=lambda: f"{len(warehouse_changes(settings, started_ms)):,} there")
    finally:
        stop_all(children)
        client.drop_database(name)
        delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
        client.close()

    loaded = {c: (wall, at) for c, wall, at in warehouse_changes(settings, started_ms)}
    loads = [json.loads(line) for line in settings.load_metrics.read_text().splitlines() if line.strip()]
    committed = {load["began_us"]: load["committed_us"] for load in loads}
    silver_table = DeltaTable(str(settings.table_path(tables.SILVER)))
    # Each batch's silver commit carries "<writer>:<batch>" (streaming/lake_writer.OnceAppender).
    commits = {int(c["userMetadata"].rsplit(":", 1)[1]): c["timestamp"] / 1000
               for c in silver_table.history() if ":" in str(c.get("userMetadata") or "")}
    silver = silver_table.to_pyarrow_table(
        columns=["change_id", "kafka_timestamp", "ingested_at", "batch_id"]).to_pylist()
    seen = {r["change_id"]: (r["kafka_timestamp"].timestamp(),
                             commits.get(r["batch_id"], r["ingested_at"].timestamp())) for r in silver}
    batches = [json.loads(line) for line in settings.batch_metrics.read_text().splitlines() if line.strip()]
    return settings, loaded, committed, seen, batches, loads


def _report(args: argparse.Namespace, settings: Settings, loaded: dict[str, Any], committed: dict[int, int],
            seen: dict[str, Any], batches: list[dict[str, Any]], loads: list[dict[str, Any]]) -> None:
    rows = []
    for change_id, (wall_ms, loaded_us) in loaded.items():
        if change_id not in seen or loaded_us not in committed:
            continue
        commit, kafka, ingested = wall_ms / 1000, *seen[change_id]
        rows.append((committed[loaded_us] / 1e6 - commit, kafka - commit, ingested - kafka,
                     committed[loaded_us] / 1e6 - ingested))
    if not rows:
        raise SystemExit("no change could be followed through every stage")
    e2e = [r[0] for r in rows]
    print(f"freshness, MongoDB commit -> row in DuckDB, {len(rows):,} changes at {args.rate:g}/s "
          f"(trigger {settings.trigger_seconds:g} s, loader poll {args.poll:g} s): p50 {pct(e2e, 50):.2f} s, "
          f"p95 {pct(e2e, 95):.2f} s, max {max(e2e):.2f} s")
    for index, stage in enumerate(("capture (MongoDB -> Kafka)", "Kafka -> silver", "silver -> DuckDB"), start=1):
        values = [r[index] for r in rows]
        share = sum(values) / sum(e2e)
        print(f"  {stage:<27} p50 {pct(values, 50):5.2f} s  p95 {pct(values, 95):5.2f} s  "
              f"{share:4.0%} of the mean")
    busy = [b["duration_ms"] / 1000 for b in batches if b.get("input_rows")]
    steady = [load["seconds"] for load in loads if load["rows_read"]]
    if busy:
        print(f"  streaming batches: {len(busy)}, p50 {pct(busy, 50):.2f} s each; loads: {len(steady)}, "
              f"p50 {pct(steady, 50):.2f} s each")


if __name__ == "__main__":
    main()
