"""Inventory alert delay: from a stock change's MongoDB commit to its alert row in the lake's Delta table.

The real chain as run-all starts it: the producer (`lakehouse produce`) and the streaming job (`lakehouse
stream`, whose inventory query reads silver's Parquet copy), against the servers of `make servers`, with
this run's own database, topics and lake. Orders, customers and products change at --rate per second for
--seconds (each order placed takes its items out of stock; restocks bring them back). Once every expected
alert is in `inventory_alerts` (the crossings of each product's stock history in silver), each alert's
delay is read back:

  MongoDB commit   the stock change's wallTime (silver wall_time_ms)
  alert written    the alert row's computed_at (stamped by the writer, just before its Delta commit)

    make servers && .venv/bin/python bench/alert_delay_bench.py --rate 50 --seconds 120
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from deltalake import DeltaTable
from freshness_bench import pct, wait_for  # this folder is the script's first import path

from lakehouse.adapters.kafka import delete_topics
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.app.run_all import spawn, stop_all
from lakehouse.contracts import tables
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from producer.generator import OrderGenerator
from streaming.inventory import crossings


def rows(settings: Settings, name: str, columns: list[str]) -> list[dict]:
    path = settings.table_path(name)
    if not DeltaTable.is_deltatable(str(path)):
        return []
    return DeltaTable(str(path)).to_pyarrow_table(columns=columns).to_pylist()


def expected_alerts(settings: Settings) -> set[str]:
    """change_ids of the stock changes that cross a threshold, from silver."""
    history: dict[str, list[dict]] = defaultdict(list)
    for row in rows(settings, tables.SILVER, ["collection", "op", "doc_id", "name", "stock", "event_time",
                                              "change_id", *tables.SOURCE_ORDER]):
        if row["collection"] == "products" and row["op"] != "delete" and row["stock"] is not None:
            history[row["doc_id"]].append(row)
    return {a["change_id"] for changes in history.values()
            for a in crossings(changes, None, settings.inventory_low, settings.inventory_critical)[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second made in MongoDB")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long changes are made")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run's state (logs) in this folder")
    args = parser.parse_args()
    configure("WARNING")
    name = f"alerts{int(time.time())}"
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        settings = Settings.from_env(mongo_db=name, topic_prefix=name, lake_path=root / "lake",
                                     warehouse_path=root / "warehouse.duckdb", state_dir=root / "state")
        client = connect_mongo(settings, "alert-delay-bench")
        db = client[name]
        children = []
        try:
            children.append(spawn(settings, "producer", "produce", "--snapshot", "when_needed"))
            children.append(spawn(settings, "streaming", "stream"))
            db["products"].insert_one({"_id": "warm-up", "name": "warm-up", "category": "toys", "stock": 0})
            print("waiting for a warm-up alert (Spark starts in 10-60 s) ...", flush=True)
            wait_for("the warm-up alert", lambda: rows(settings, tables.INVENTORY_ALERTS, ["change_id"]), 600,
                     children)
            generator = OrderGenerator.for_database(db, settings.collections, seed=11)
            total = int(args.rate * args.seconds)
            print(f"making {total:,} changes at {args.rate:g}/s for {args.seconds:g} s ...", flush=True)
            stats = generator.run(total, rate=args.rate)
            print(f"made {stats.total:,} changes ({stats.references:,} to customers and products); waiting for "
                  "every alert ...", flush=True)
            made = stats.total + 1
            wait_for("every change in silver", lambda: len(rows(settings, tables.SILVER, ["change_id"])) >= made,
                     600, children)
            wanted = expected_alerts(settings)
            wait_for("every alert", lambda: wanted <= {r["change_id"] for r in rows(
                settings, tables.INVENTORY_ALERTS, ["change_id"])}, 300, children)
        finally:
            stop_all(children)
            client.drop_database(name)
            delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
            client.close()

        committed = {r["change_id"]: r["wall_time_ms"] / 1000 for r in rows(
            settings, tables.SILVER, ["change_id", "wall_time_ms"]) if r["wall_time_ms"] is not None}
        alerts = rows(settings, tables.INVENTORY_ALERTS, ["change_id", "level", "computed_at"])
    delays = [a["computed_at"].timestamp() - committed[a["change_id"]] for a in alerts
              if a["change_id"] in committed]
    if not delays:
        raise SystemExit("no alert could be followed back to its MongoDB commit")
    levels = defaultdict(int)
    for a in alerts:
        levels[a["level"]] += 1
    print(f"alert delay, MongoDB commit -> row in inventory_alerts, {len(delays):,} alerts at {args.rate:g} "
          f"changes/s (trigger {settings.trigger_seconds:g} s): p50 {pct(delays, 50):.2f} s, "
          f"p95 {pct(delays, 95):.2f} s, max {max(delays):.2f} s")
    print("  alerts by level: " + ", ".join(f"{level} {n}" for level, n in sorted(levels.items())))


if __name__ == "__main__":
    main()
