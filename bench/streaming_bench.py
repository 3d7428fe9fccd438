"""Streaming job figures: rows/s Kafka -> silver Delta, and latency at a fixed input rate.

1. Throughput: a topic is preloaded with --rows change events, then the lake query drains it with
   Trigger.AvailableNow; rows/s = rows / time from query start to its end (Spark session start-up
   excluded, micro-batches of MAX_ROWS_PER_BATCH included).
2. Latency: events are produced at --rate per second for --seconds while the query runs with its
   processing-time trigger; per event, latency = time written to silver - Kafka timestamp; per batch,
   the job's own duration. Prints p50/p95/max.

    make servers && .venv/bin/python bench/streaming_bench.py --rows 20000 --rate 200 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from deltalake import DeltaTable

from lakehouse.adapters.kafka import delete_topics, ensure_topics, idempotent_producer
from lakehouse.contracts import events, tables
from lakehouse.core.collections import ORDERS
from lakehouse.core.config import Settings
from lakehouse.core.logs import configure
from streaming.job import build_session, start, stop_queries


def envelope(n: int, now: int) -> bytes:
    doc = json.dumps({"order_id": f"ord-{n:08d}", "status": "paid", "amount": f"${n % 3000}.50", "currency": "USD"})
    body = {name: None for name in events.ENVELOPE_FIELD_NAMES} | {
        "schema_version": events.SCHEMA_VERSION, "change_id": f"bench-{n}", "op": "insert", "db": "bench",
        "collection": ORDERS, "doc_id": str(n), "key": f"ord-{n:08d}", "full_document": doc,
        "cluster_time_s": now, "cluster_time_inc": n, "txn_op_index": 0,
    }
    return events.encode(body)


def produce(settings: Settings, count: int, rate: float | None, offset: int = 0) -> None:
    producer = idempotent_producer(settings)
    started = time.monotonic()
    for i in range(count):
        producer.send(settings.topics[0], key=str(i).encode(), value=envelope(offset + i, int(time.time())))
        if rate:
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()


def phase_totals(records: list[dict]) -> dict[str, int]:
    """Where the batches' time went, summed over them (BatchRecord.phases_ms)."""
    out: dict[str, int] = {}
    for record in records:
        for phase, ms in record.get("phases_ms", {}).items():
            out[phase] = out.get(phase, 0) + ms
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s for the latency run")
    parser.add_argument("--seconds", type=int, default=30, help="length of the latency run")
    args = parser.parse_args()
    configure("WARNING")
    name = f"bench{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(mongo_db=name, topic_prefix=name, lake_path=Path(tmp) / "lake",
                                     state_dir=Path(tmp) / "state", trigger_seconds=1.0)
        ensure_topics(settings, settings.topics)
        print(f"preloading {args.rows} events into {settings.topics[0]} ...", flush=True)
        produce(settings, args.rows, None)
        spark = build_session(settings)

        t0 = time.perf_counter()
        query = start(spark, settings, available_now=True)
        query.awaitTermination()
        elapsed = time.perf_counter() - t0
        silver = DeltaTable(str(settings.table_path(tables.SILVER))).to_pyarrow_table().num_rows
        print(f"throughput: {silver} rows Kafka -> silver Delta in {elapsed:.1f} s = {silver / elapsed:,.0f} rows/s "
              f"(batches of at most {settings.max_rows_per_batch})")

        metrics = settings.batch_metrics
        drained = [json.loads(line) for line in metrics.read_text().splitlines()]
        busy = sum(b["duration_ms"] for b in drained) / 1000
        evaluating = sum(b["spark_ms"] for b in drained) / 1000
        steady = drained[1:]
        if steady:
            steady_rows = sum(b["input_rows"] for b in steady)
            steady_s = sum(b["duration_ms"] for b in steady) / 1000
            print(f"  after the first (cold) batch: {steady_rows} rows in {len(steady)} batches, "
                  f"{steady_s:.1f} s inside them = {steady_rows / steady_s:,.0f} rows/s")
        print(f"  of which inside {len(drained)} batches: {busy:.1f} s, {evaluating:.1f} s of it reading Kafka + "
              f"parsing + UDFs in Spark, {busy - evaluating:.1f} s writing the Delta/Parquet outputs; "
              f"the other {elapsed - busy:.1f} s is query start-up and planning between batches")
        print(f"  phases of the batches, ms: {phase_totals(drained)}")
        before = len(drained)
        query = start(spark, settings)
        produce(settings, int(args.rate * args.seconds), args.rate, offset=args.rows)
        deadline = time.monotonic() + 120
        expected = args.rows + int(args.rate * args.seconds)
        while time.monotonic() < deadline:
            table = DeltaTable(str(settings.table_path(tables.SILVER))).to_pyarrow_table(
                columns=["change_id", "kafka_timestamp", "ingested_at"])
            if table.num_rows >= expected:
                break
            time.sleep(1)
        stop_queries([query])  # after the batch in hand, as the job stops
        spark.stop()
        delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
        rows = [r for r in table.to_pylist() if int(r["change_id"].split("-")[1]) >= args.rows]  # latency phase
        latencies = [(r["ingested_at"] - r["kafka_timestamp"]).total_seconds() for r in rows]
        batches = [json.loads(line) for line in metrics.read_text().splitlines()[before:]]
        durations = [b["duration_ms"] / 1000 for b in batches if b["input_rows"]]
    print(f"latency at {args.rate:.0f} events/s for {args.seconds} s ({len(latencies)} events, trigger 1 s): "
          f"p50 {pct(latencies, 50):.2f} s, p95 {pct(latencies, 95):.2f} s, max {max(latencies):.2f} s")
    print(f"per-batch job time ({len(durations)} batches): p50 {pct(durations, 50):.2f} s, "
          f"p95 {pct(durations, 95):.2f} s, mean rows/batch {statistics.mean(b['input_rows'] for b in batches):.0f}")
    print(f"  phases of those batches, ms: {phase_totals([b for b in batches if b['input_rows']])}")


if __name__ == "__main__":
    main()
