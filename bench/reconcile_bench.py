"""How long `lakehouse reconcile` takes on N documents, and its peak memory.

Starts its own MongoDB (a scratch folder, a free port), inserts N order documents, builds a warehouse
whose `orders` holds the same documents (as the loader would: the producer's Extended JSON) except for a
few planted differences, then times one reconcile and checks it found exactly those.

    .venv/bin/python bench/reconcile_bench.py --documents 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra import servers  # noqa: E402
from lakehouse.adapters.mongo import connect as connect_mongo  # noqa: E402
from lakehouse.contracts import events  # noqa: E402
from lakehouse.core.config import Settings  # noqa: E402
from warehouse.loader import open_warehouse  # noqa: E402

PLANTED = 100  # missing, extra and mismatched each


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    settings = Settings.from_env(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/", stack_dir=base / "servers",
                                 warehouse_path=base / "wh.duckdb", state_dir=base / "state", mongo_db="bench")
    print(servers.start_mongo(settings), flush=True)
    try:
        orders = connect_mongo(settings)[settings.mongo_db]["orders"]
        started = time.monotonic()
        now = datetime(2026, 11, 23, tzinfo=UTC)
        doc_ids, documents = [], []
        for start in range(0, args.documents, 10_000):
            batch = [{"_id": n, "order_id": f"ord-{n:08d}", "customer_id": f"cust-{n % 997:04d}",
                      "status": "paid", "amount": f"{n % 2500}.50", "currency": "USD", "created_at": now}
                     for n in range(start, min(start + 10_000, args.documents))]
            orders.insert_many(batch, ordered=False)
            for document in batch:
                doc_ids.append(events.doc_id_text({"_id": document["_id"]}))
                documents.append(events.to_extended_json(document))
        print(f"inserted {args.documents:,} documents in {time.monotonic() - started:.1f}s", flush=True)
        # The warehouse: the same documents, less PLANTED, with PLANTED changed and PLANTED extra.
        missing = set(range(0, PLANTED))
        changed = set(range(PLANTED, 2 * PLANTED))
        rows = [(d, doc.replace('"paid"', '"lost"') if n in changed else doc)
                for n, (d, doc) in enumerate(zip(doc_ids, documents, strict=True)) if n not in missing]
        rows += [(f"extra-{n}", f'{{"_id": "extra-{n}"}}') for n in range(PLANTED)]
        con = open_warehouse(settings)
        table = pa.table({"doc_id": [r[0] for r in rows], "document": [r[1] for r in rows]})
        con.register("rows", table)
        con.execute("INSERT INTO orders (doc_id, document, last_change_id, cluster_time_s, cluster_time_inc, "
                    "txn_op_index) SELECT doc_id, document, doc_id, 0, 0, 0 FROM rows")
        con.close()
        del rows, table, documents, doc_ids

        # `lakehouse reconcile` as its own process, so its peak memory is its own.
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "lakehouse.app.cli", "reconcile"], env={**os.environ,
                              **settings.to_env()}, capture_output=True, text=True)
        took = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if not done.stdout.strip():
            raise SystemExit(f"lakehouse reconcile printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}")
        line = done.stdout.strip().splitlines()[-1]
        print(line)
        assert f"missing={PLANTED} extra={PLANTED} mismatched={PLANTED}" in line, done.stdout + done.stderr
        print(f"reconcile of {args.documents:,} documents: {took:.1f}s wall clock for the command "
              f"({args.documents / took:,.0f} documents/s); its peak RSS {peak / 1024:,.0f} MiB", flush=True)
    finally:
        print(servers.stop_mongo(settings))


if __name__ == "__main__":
    main()
