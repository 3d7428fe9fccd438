"""How each stage's cost grows with the data: the initial snapshot of N documents through producer -> Kafka
-> lake -> warehouse -> reconcile, for several N.

Starts its own MongoDB and Kafka (a scratch folder, free ports). For each N it inserts N order documents
into a database of its own, then runs each stage as its own process, as an operator would, to the end:
`lakehouse produce --snapshot initial --until-idle`, `lakehouse stream --available-now`, `lakehouse load`,
`lakehouse reconcile`. Per stage it prints the wall time, documents/s and the peak RSS of the process (and,
for the streaming job, of Spark's JVM, its child); then the size on disk of Kafka's topics, the lake and
the warehouse. Each row also goes to --out as a JSON line, for the README's charts.

    .venv/bin/python bench/scale_bench.py --documents 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measured import MEASURED, peaks  # noqa: E402
from infra import servers  # noqa: E402
from lakehouse.adapters.mongo import connect as connect_mongo  # noqa: E402
from lakehouse.core.collections import ORDERS  # noqa: E402
from lakehouse.core.config import Settings  # noqa: E402
from tests.chaos import descendants  # noqa: E402
from tests.helpers import free_port  # noqa: E402

STAGES = (("producer", ("produce", "--snapshot", "initial", "--until-idle")),
          ("streaming", ("stream", "--available-now")),
          ("warehouse", ("load",)),
          ("reconcile", ("reconcile",)))
def size_of(paths: list[Path]) -> int:
    """Bytes allocated on disk (Kafka preallocates its index files sparsely: their length overstates)."""
    return sum(f.stat().st_blocks * 512 for p in paths if p.exists()
               for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def _peak_of_children(process: subprocess.Popen[str], peak: list[int]) -> None:
    """The largest VmHWM (KiB) among the process's descendants (Spark's JVM, which it does not reap)."""
    while process.poll() is None:
        for pid in descendants(process.pid)[1:]:  # [0] is the process itself
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                continue
        time.sleep(1.0)


def insert(settings: Settings, count: int) -> float:
    orders = connect_mongo(settings)[settings.mongo_db][ORDERS]
    started, now = time.monotonic(), datetime(2026, 11, 23, tzinfo=UTC)
    for start in range(0, count, 10_000):
        orders.insert_many([{"_id": n, "order_id": f"ord-{n:08d}", "customer_id": f"cust-{n % 997:04d}",
                             "status": "paid", "amount": f"{n % 2500}.50", "currency": "USD", "created_at": now}
                            for n in range(start, min(start + 10_000, count))], ordered=False)
    return time.monotonic() - started


def run_stage(settings: Settings, args: tuple[str, ...], log: Path) -> tuple[float, int, int, str]:
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", MEASURED, *args], env={**os.environ, **settings.to_env()},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    watcher = threading.Thread(target=_peak_of_children, args=(process, peak), daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    took = time.monotonic() - started
    watcher.join()
    log.write_text(stdout + stderr)
    if process.returncode != 0 or "PEAK_RSS_KIB" not in stderr:
        raise SystemExit(f"`lakehouse {' '.join(args)}` failed (exit {process.returncode}); see {log}")
    own, reaped = peaks(stderr)
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return took, own, max(reaped, peak[0]), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path("scale_bench.jsonl"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    stack = Settings.from_env(mongo_uri=f"mongodb://127.0.0.1:{free_port()}/",
                              kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", stack_dir=base / "servers",
                              collections=(ORDERS,))
    for line in servers.start(stack):
        print(line, flush=True)
    try:
        with args.out.open("a") as out:
            for count in args.documents:
                name = f"scale{count}"
                settings = stack.replace(mongo_db=name, topic_prefix=name, lake_path=base / name / "lake",
                                         warehouse_path=base / name / "warehouse.duckdb",
                                         state_dir=base / name / "state", max_rows_per_batch=200_000)
                (base / name).mkdir(parents=True)
                print(f"\n{count:,} documents: inserted into MongoDB in {insert(settings, count):.1f}s", flush=True)
                for stage, command in STAGES:
                    took, own, children, last = run_stage(settings, command, base / name / f"{stage}.log")
                    row = {"documents": count, "stage": stage, "seconds": round(took, 1),
                           "docs_per_s": round(count / took), "peak_rss_mib": round(own / 1024),
                           "children_peak_rss_mib": round(children / 1024)}
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    jvm = f", Spark's JVM {children / 1024:,.0f} MiB" if stage == "streaming" else ""
                    print(f"  {stage:9} {took:8.1f} s {count / took:10,.0f} docs/s  peak RSS {own / 1024:,.0f} MiB"
                          f"{jvm}   {last[:100]}", flush=True)
                kafka = size_of(list((stack.stack_dir / "kafka").rglob(f"{name}.*")))
                sizes = {"kafka_mib": kafka / 2**20, "lake_mib": size_of([settings.lake_path]) / 2**20,
                         "warehouse_mib": size_of([settings.warehouse_path]) / 2**20}
                out.write(json.dumps({"documents": count, "stage": "disk", **sizes}) + "\n")
                print(f"  on disk: Kafka {sizes['kafka_mib']:,.0f} MiB, lake {sizes['lake_mib']:,.0f} MiB, "
                      f"warehouse {sizes['warehouse_mib']:,.0f} MiB", flush=True)
    finally:
        for line in servers.stop(stack):
            print(line, flush=True)


if __name__ == "__main__":
    main()
