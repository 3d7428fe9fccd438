"""Warehouse merge throughput: changes/s from the silver Delta table into DuckDB.

1 M source changes (75% inserts, 20% updates, 5% deletes) plus 10% of them again as duplicates,
all 1.1 M rows shuffled (so most arrive out of source order), appended to a silver table in
--batches Delta commits. Each commit is followed by one incremental `load` (read the new files,
dedup by change_id, ordered apply). Prints rows/s over the loads, and checks the result: 700,000
current orders, each with the status of its last update.

    .venv/bin/python bench/warehouse_bench.py --changes 1000000 --batches 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from lakehouse.contracts import events, tables
from lakehouse.core.collections import ORDERS
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from warehouse.connection import connect
from warehouse.loader import load

SCHEMA = tables.silver_schema(Settings())


def source_history(changes: int, rng: np.random.Generator) -> tuple[pa.Table, dict[int, str]]:
    """Changes in source order and the expected final status per live document."""
    inserts, updates = int(changes * 0.75), int(changes * 0.20)
    deletes = changes - inserts - updates
    updated = rng.integers(0, inserts, updates)
    deleted = rng.choice(inserts, deletes, replace=False)
    docs = np.concatenate([np.arange(inserts), updated, deleted])
    ops = ["insert"] * inserts + ["update"] * updates + ["delete"] * deletes
    statuses = ["created"] * inserts + [f"s{i % 7}" for i in range(updates)] + [None] * deletes
    expected = {int(d): "created" for d in range(inserts)}
    for doc, status in zip(updated.tolist(), statuses[inserts:inserts + updates], strict=True):
        expected[doc] = status
    for doc in deleted.tolist():
        expected.pop(doc, None)
    seq = np.arange(changes)
    base = 1_790_000_000
    amount = [f"{(d % 2000) + 0.5:.2f}" for d in docs.tolist()]
    documents = [
        None if op == "delete" else
        json.dumps({"_id": d, "order_id": f"o{d}", "status": st, "amount": a,
                    "created_at": {"$date": "2026-11-20T10:15:00Z"}})
        for d, op, st, a in zip(docs.tolist(), ops, statuses, amount, strict=True)
    ]
    n = changes
    table = pa.table({
        "schema_version": pa.array(np.full(n, events.SCHEMA_VERSION, np.int32)),
        "change_id": pa.array([f"c{i}" for i in range(n)]),
        "op": pa.array(ops),
        "db": pa.array(["bench"] * n),
        "collection": pa.array([ORDERS] * n),
        "doc_id": pa.array([str(d) for d in docs.tolist()]),
        "key": pa.array([f"o{d}" for d in docs.tolist()]),
        "full_document": pa.array(documents),
        "cluster_time_s": pa.array(base + seq // 100),
        "cluster_time_inc": pa.array(seq % 100),
        "txn_op_index": pa.array(np.zeros(n, np.int64)),
        "event_time": pa.array([datetime.fromtimestamp(base + i // 100, UTC) for i in range(0, n)],
                               pa.timestamp("us", tz="UTC")),
        "status": pa.array(statuses),
        "amount_raw": pa.array([None if op == "delete" else a for op, a in zip(ops, amount, strict=True)]),
        "amount": pa.array([None if op == "delete" else Decimal(a) for op, a in zip(ops, amount, strict=True)],
                           pa.decimal128(18, 2)),
        "amount_currency": pa.array([None if op == "delete" else "USD" for op in ops]),
        "kafka_topic": pa.array(["cdc.bench.orders"] * n),
        "kafka_partition": pa.array((docs % 3).astype(np.int32)),
        "kafka_offset": pa.array(seq),
    })
    missing = [f for f in SCHEMA if f.name not in table.column_names]
    for field in missing:
        table = table.append_column(field, pa.nulls(n, field.type))
    return table.select(SCHEMA.names).cast(SCHEMA), expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=10, help="Delta commits, each followed by one load")
    args = parser.parse_args()
    configure("WARNING")
    rng = np.random.default_rng(11)
    print(f"generating {args.changes:,} changes ...", flush=True)
    history, expected = source_history(args.changes, rng)
    duplicates = rng.choice(args.changes, args.changes // 10, replace=False)
    delivered = pa.concat_tables([history, history.take(duplicates)])
    delivered = delivered.take(rng.permutation(delivered.num_rows))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(lake_path=Path(tmp) / "lake", warehouse_path=Path(tmp) / "wh.duckdb",
                                     state_dir=Path(tmp) / "state")
        silver = str(settings.table_path(tables.SILVER))
        size = -(-delivered.num_rows // args.batches)
        loading, rates = 0.0, []
        for i in range(args.batches):
            write_deltalake(silver, delivered.slice(i * size, size), mode="append")
            started = time.perf_counter()
            result = load(settings)
            took = time.perf_counter() - started
            loading += took
            rates.append(result.rows_read / took)
            print(f"  load {i + 1}/{args.batches}: {result.rows_read:,} rows, {result.new_changes:,} new changes, "
                  f"{result.current.get('orders', 0):,} orders in {took:.2f} s = {rates[-1]:,.0f} rows/s", flush=True)
        con = connect(settings.warehouse_path, read_only=True)
        state = dict(con.execute("SELECT doc_id, status FROM orders").fetchall())
        facts = con.execute("SELECT count(*) FROM fact_order_changes").fetchall()[0][0]
        history_current = con.execute("SELECT count(*) FROM orders_history WHERE is_current").fetchall()[0][0]
        con.close()
    correct = state == {str(k): v for k, v in expected.items()} and history_current == len(state)
    print(f"merged {delivered.num_rows:,} rows ({args.changes:,} changes + {len(duplicates):,} duplicates, "
          f"shuffled) in {loading:.1f} s of loading = {delivered.num_rows / loading:,.0f} rows/s, "
          f"{args.changes / loading:,.0f} distinct changes/s; {facts:,} facts, {len(state):,} current orders; "
          f"equal to in-order apply: {correct}")
    print(f"per load: first {rates[0]:,.0f} rows/s, last {rates[-1]:,.0f} rows/s "
          f"(last/first {rates[-1] / rates[0]:.2f}), "
          f"median {sorted(rates)[len(rates) // 2]:,.0f} rows/s")


if __name__ == "__main__":
    main()
