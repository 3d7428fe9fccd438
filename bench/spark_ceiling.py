"""The streaming job against plain Spark on the same events, in the same run: the job's figures as ratios.

The ceiling is the plainest query that does the job's essential work: `readStream.format("kafka")` ->
`from_json` of the envelope and of the document -> the amount parsed with SQL functions ->
`writeStream.format("delta")` (Spark's own Delta sink, no foreachBatch), in the job's own Spark session
(same jars and settings). Both read one preloaded topic from its beginning, each under its own checkpoint:

1. Throughput: --rows events drained with Trigger.AvailableNow in batches of --batch rows; rows/s
   overall (query start to end) and after the cold first batch (from Spark's progress reports).
2. Latency: while each query runs with a --trigger seconds trigger, --rate events/s are produced for
   --seconds; per event, latency = its batch's start (`ingested_at`) - its Kafka timestamp.

On a shared 2-core machine only the ratios mean much:

    make servers && .venv/bin/python bench/spark_ceiling.py --rows 200000 --batch 100000 --rate 500 --seconds 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_bench import pct, produce  # noqa: E402

from lakehouse.adapters.kafka import delete_topics, ensure_topics  # noqa: E402
from lakehouse.contracts import batches, tables  # noqa: E402
from lakehouse.core.config import Settings  # noqa: E402
from lakehouse.core.logs import configure  # noqa: E402
from streaming.job import ENVELOPE_DDL, build_session, read_kafka, start, stop_queries  # noqa: E402

DOCUMENT_DDL = "order_id STRING, status STRING, amount STRING, currency STRING"


def plain_query(spark: Any, settings: Settings, target: Path, checkpoint: Path, available_now: bool,
                trigger_seconds: float) -> Any:
    from pyspark.sql import functions as F

    event = F.from_json(F.col("value").cast("string"), ENVELOPE_DDL)
    rows = read_kafka(spark, settings).select(
        "topic", "partition", "offset", F.col("timestamp").alias("kafka_timestamp"), event.alias("e"))
    document = F.from_json(F.col("e.full_document"), DOCUMENT_DDL)
    digits = F.regexp_replace(document["amount"], r"[^0-9.\-]", "")
    parsed = rows.select("topic", "partition", "offset", "kafka_timestamp", "e.*",
                         digits.try_cast("decimal(18,2)").alias("amount"),
                         F.coalesce(document["currency"], F.lit("USD")).alias("amount_currency"),
                         F.current_timestamp().alias("ingested_at"))
    writer = (parsed.writeStream.format("delta").option("checkpointLocation", str(checkpoint))
              .queryName("plain"))
    writer = (writer.trigger(availableNow=True) if available_now
              else writer.trigger(processingTime=f"{trigger_seconds} seconds"))
    return writer.start(str(target))


def throughput(query: Any, started: float) -> tuple[int, float, int, float]:
    """(rows, seconds overall, rows after the cold batch, seconds inside those batches)."""
    query.awaitTermination()
    elapsed = time.perf_counter() - started
    batches = [p for p in query.recentProgress if p.numInputRows]
    rows = sum(p.numInputRows for p in batches)
    warm = batches[1:]
    return (rows, elapsed, sum(p.numInputRows for p in warm),
            sum((p.durationMs or {}).get("triggerExecution", 0) for p in warm) / 1000)


def latencies(table: Path, first: int, expected: int) -> list[float]:
    """Per event numbered `first` or later: its batch's start - its Kafka timestamp; waits until
    `expected` such events are in (3 minutes at most)."""
    deadline = time.monotonic() + 180
    while True:
        data = DeltaTable(str(table)).to_pyarrow_table(columns=["change_id", "kafka_timestamp", "ingested_at"])
        rows = [r for r in data.to_pylist() if int(r["change_id"].split("-")[1]) >= first]
        if len(rows) >= expected or time.monotonic() > deadline:
            return [(r["ingested_at"] - r["kafka_timestamp"]).total_seconds() for r in rows]
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100_000, help="rows per micro-batch (both queries)")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s for the latency run")
    parser.add_argument("--seconds", type=int, default=20, help="length of each latency run")
    parser.add_argument("--trigger", type=float, default=1.0, help="processing-time trigger of the latency runs")
    args = parser.parse_args()
    configure("WARNING")
    name = f"ceiling{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(mongo_db=name, topic_prefix=name, lake_path=Path(tmp) / "lake",
                                     state_dir=Path(tmp) / "state", trigger_seconds=args.trigger,
                                     max_rows_per_batch=args.batch)
        topic = settings.topics[0]
        ensure_topics(settings, settings.topics)
        print(f"preloading {args.rows} events into {topic} ...", flush=True)
        produce(settings, args.rows, None)
        spark = build_session(settings)
        plain_table, plain_checkpoint = Path(tmp) / "plain", Path(tmp) / "plain_checkpoint"
        figures: dict[str, dict[str, float]] = {}
        try:
            # Warm the JVM for both: a few thousand rows through the plain query, thrown away.
            warm = plain_query(spark, settings.replace(max_rows_per_batch=2_000), Path(tmp) / "warm",
                               Path(tmp) / "warm_checkpoint", True, args.trigger)
            warm.awaitTermination()
            for which in ("plain", "job"):
                started = time.perf_counter()
                query = (plain_query(spark, settings, plain_table, plain_checkpoint, True, args.trigger)
                         if which == "plain" else start(spark, settings, available_now=True))
                rows, elapsed, warm_rows, warm_s = throughput(query, started)
                figures[which] = {"overall": rows / elapsed, "warm": warm_rows / warm_s if warm_s else 0.0}
                print(f"{which:>5}: {rows} rows in {elapsed:.1f} s = {rows / elapsed:,.0f} rows/s overall; after the "
                      f"cold batch {warm_rows} rows in {warm_s:.1f} s = {figures[which]['warm']:,.0f} rows/s",
                      flush=True)
                for progress in query.recentProgress:
                    if progress.numInputRows:
                        print(f"       {which} trigger {progress.batchId}: {progress.numInputRows} rows, Spark's "
                              f"phases (ms) {dict(progress.durationMs or {})}", flush=True)
                if which == "job":
                    for record in batches.read(settings.batch_metrics):
                        print(f"       batch {record.batch_id}: {record.input_rows} rows in {record.duration_ms} ms: "
                              f"{record.phases_ms}", flush=True)
            offset = args.rows
            for which in ("plain", "job"):
                query = (plain_query(spark, settings, plain_table, plain_checkpoint, False, args.trigger)
                         if which == "plain" else start(spark, settings))
                count = int(args.rate * args.seconds)
                produce(settings, count, args.rate, offset=offset)
                found = latencies(plain_table if which == "plain" else settings.table_path(tables.SILVER), offset,
                                  count)
                stop_queries([query])  # after the batch in hand, as the job stops
                offset += count
                figures[which] |= {"p50": pct(found, 50), "p95": pct(found, 95), "max": max(found)}
                durations = [(p.durationMs or {}).get("triggerExecution", 0) / 1000 for p in query.recentProgress
                             if p.numInputRows]
                print(f"{which:>5}: latency at {args.rate:.0f} events/s, {args.trigger:g} s trigger ({len(found)} "
                      f"events): p50 {figures[which]['p50']:.2f} s, p95 {figures[which]['p95']:.2f} s, max "
                      f"{figures[which]['max']:.2f} s; batches p50 {pct(durations, 50):.2f} s", flush=True)
        finally:
            spark.stop()
            delete_topics(settings, [*settings.topics, settings.dead_letter_topic])
    job, plain = figures["job"], figures["plain"]

    def ratio(name: str) -> str:
        return f"{job[name] / plain[name]:.2f}" if plain[name] else "n/a (no batch after the cold one)"

    print(f"ratio job / plain Spark: overall {ratio('overall')} (target >= 0.5), after the cold batch "
          f"{ratio('warm')} (target >= 0.6); latency p95 {ratio('p95')} x plain's (target <= 1.25)")

if __name__ == "__main__":
    main()
