"""How long `lakehouse reconcile` takes on N documents, and its peak memory; and the second look of a
periodic round (the documents that differed, read again by _id) at --planted differences of each kind.

Starts its own MongoDB (a scratch folder, a free port), inserts N order documents, builds a warehouse
whose `orders` holds the same documents (as the loader would: the producer's Extended JSON and digest)
except for the planted differences (missing, changed, extra), then times one reconcile and checks it
found exactly those, then times the second look over them.

    .venv/bin/python bench/reconcile_bench.py --documents 1000000
    .venv/bin/python bench/reconcile_bench.py --documents 200000 --planted 1000 10000 100000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measured import MEASURED, peaks  # noqa: E402
from infra import servers  # noqa: E402
from lakehouse.adapters.mongo import connect as connect_mongo  # noqa: E402
from lakehouse.app.reconcile import reconcile  # noqa: E402
from lakehouse.contracts import events  # noqa: E402
from lakehouse.core.collections import ORDERS  # noqa: E402
from lakehouse.core.config import Settings  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from warehouse.connection import open_warehouse  # noqa: E402

PLANTED = 100  # missing, extra and mismatched each, by default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--planted", type=int, nargs="+", default=[PLANTED],
                        help="differences of each kind (missing, changed, extra); several: one run each")
    parser.add_argument("--keep", action="store_true",
                        help="leave MongoDB running and print the settings, to profile `lakehouse reconcile` by hand")
    args = parser.parse_args()
    for planted in args.planted:
        if 2 * planted > args.documents:
            parser.error(f"--planted {planted}: at most half of --documents ({args.documents // 2})")
        run(args, planted)


def run(args: argparse.Namespace, planted: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    settings = Settings.from_env(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/", stack_dir=base / "servers",
                                 warehouse_path=base / "wh.duckdb", state_dir=base / "state", mongo_db="bench")
    print(servers.start_mongo(settings), flush=True)
    try:
        orders = connect_mongo(settings)[settings.mongo_db][ORDERS]
        started = time.monotonic()
        now = datetime(2026, 11, 23, tzinfo=UTC)
        # The warehouse: the same documents, less PLANTED, with PLANTED changed and PLANTED extra; built a
        # chunk at a time alongside MongoDB, so the bench itself stays small at millions of documents.
        con = open_warehouse(settings)
        for start in range(0, args.documents, 10_000):
            batch = [{"_id": n, "order_id": f"ord-{n:08d}", "customer_id": f"cust-{n % 997:04d}",
                      "status": "paid", "amount": f"{n % 2500}.50", "currency": "USD", "created_at": now}
                     for n in range(start, min(start + 10_000, args.documents))]
            orders.insert_many(batch, ordered=False)
            # The first `planted` are missing; the next `planted` are changed in the warehouse after their
            # digest was made (as a bad load would); `planted` are extra.
            rows = [(events.doc_id_text(d), text.replace('"paid"', '"lost"') if d["_id"] < 2 * planted else text,
                     events.document_digest(d, text)) for d in batch
                    if d["_id"] >= planted and (text := events.to_extended_json(d))]
            if start == 0:
                rows += [(f"extra-{n}", f'{{"_id": "extra-{n}"}}', None) for n in range(planted)]
            con.register("rows", pa.table({"doc_id": [r[0] for r in rows], "document": [r[1] for r in rows],
                                           "document_digest": pa.array([r[2] for r in rows], pa.string())}))
            con.execute("INSERT INTO orders (doc_id, document, document_digest, last_change_id, cluster_time_s, "
                        "cluster_time_inc, txn_op_index) SELECT doc_id, document, document_digest, doc_id, 0, 0, 0 "
                        "FROM rows")
            con.unregister("rows")
            if start % 500_000 == 0:
                print(f"  {start + len(batch):,} documents in MongoDB and the warehouse", flush=True)
        con.close()
        print(f"inserted {args.documents:,} documents in {time.monotonic() - started:.1f}s", flush=True)

        # A bare find() over the same documents, the ceiling of any reconcile (twice: the first warms the cache).
        bare = ("import sys, time\nfrom pymongo import MongoClient\nc = MongoClient(sys.argv[1])\n"
                "t = time.monotonic()\nn = sum(1 for _ in c.bench.orders.find({}, batch_size=10000))\n"
                "print(n, time.monotonic() - t)")
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", bare, settings.mongo_uri], capture_output=True, text=True,
                                 check=True).stdout.split()
        bare_s = float(out[1])
        # `lakehouse reconcile` as its own process, which reports its own peak memory.
        started = time.monotonic()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            command = subprocess.Popen([sys.executable, "-c", MEASURED, "reconcile"],
                                       env={**os.environ, **settings.to_env()}, stdout=out, stderr=err, text=True)
            timeline = _rss_timeline(command)
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(command.args, command.returncode, out.read(), err.read())
        took = time.monotonic() - started
        peak = peaks(done.stderr)[0]
        if not done.stdout.strip():
            raise SystemExit(f"lakehouse reconcile printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}")
        if os.environ.get("BENCH_VERBOSE"):  # the command's own log
            print(done.stderr)
        line = done.stdout.strip().splitlines()[-1]
        print(line)
        assert f"missing={planted} extra={planted} mismatched={planted}" in line, done.stdout + done.stderr
        print(f"reconcile of {args.documents:,} documents: {took:.1f}s wall clock for the command "
              f"({args.documents / took:,.0f} documents/s); its peak RSS {peak / 1024:,.0f} MiB", flush=True)
        print("its RSS over time (MiB, every 10th of the run):",
              " ".join(f"{at:.0f}s:{mib}" for at, mib in timeline[::max(1, len(timeline) // 10)]))
        print(f"bare find() over the same documents: {bare_s:.1f}s ({args.documents / bare_s:,.0f} documents/s); "
              f"reconcile at {bare_s / took:.2f} of it", flush=True)
        # A periodic round's second look: the documents that differed, read again by _id (in small queries).
        first = reconcile(settings, ORDERS)
        started = time.monotonic()
        second = reconcile(settings, ORDERS, keys=first)
        looked = time.monotonic() - started
        differing = planted * 3
        assert (len(second.missing), len(second.extra), len(second.mismatched)) == (planted,) * 3, second.line()
        print(f"second look over {differing:,} differing documents ({planted:,} of each kind): {looked:.1f}s "
              f"({differing / looked:,.0f} documents/s)", flush=True)
    finally:
        if args.keep:
            print("kept; reconcile again with:", " ".join(f"{k}={v}" for k, v in settings.to_env().items()))
        else:
            print(servers.stop_mongo(settings))


def _rss_timeline(command: subprocess.Popen[str]) -> list[tuple[float, int]]:
    """(seconds since start, RSS MiB) of a running command, twice a second until it ends."""
    samples, started = [], time.monotonic()
    while command.poll() is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pages = int(Path(f"/proc/{command.pid}/statm").read_text().split()[1])
            samples.append((time.monotonic() - started, pages * os.sysconf("SC_PAGE_SIZE") // 2**20))
        time.sleep(0.5)
    return samples


if __name__ == "__main__":
    main()
