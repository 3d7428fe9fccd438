"""Windowed order aggregates: revenue, count, average and high-value count per tumbling window and
status, with an event-time watermark, written in append mode (a window is final once written).

They read silver's Parquet copy with Spark's built-in file stream source, not Kafka again: one
Kafka read per pipeline, and the aggregates see exactly the parsed, typed rows silver has.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.adapters.delta import append_once, conform, writer_app_id
from lakehouse.contracts import tables, types
from lakehouse.core.config import Settings

log = logging.getLogger(__name__)

# Changes that carry an order's state; deletes and snapshot_end markers carry no amount.
ORDER_STATES = ("insert", "update", "replace", "snapshot")


class AggregateWriter:
    def __init__(self, settings: Settings, granularity: str) -> None:
        self.table = settings.table_path(tables.AGGREGATES)
        self.granularity = granularity
        self.app_id = writer_app_id(settings.aggregates_checkpoint / granularity)
        self.schema = types.arrow_schema(tables.AGGREGATES_COLUMNS)

    def __call__(self, batch_df: Any, batch_id: int) -> None:
        rows = batch_df.toArrow()  # materialise always (see BatchWriter)
        if rows.num_rows == 0:
            return
        now = pa.scalar(int(time.time() * 1_000_000), pa.timestamp("us", tz="UTC"))
        rows = rows.append_column("granularity", pa.array([self.granularity] * rows.num_rows))
        rows = rows.append_column("computed_at", pa.array([now] * rows.num_rows))
        append_once(self.table, conform(rows, self.schema), self.app_id, batch_id)


def start_aggregates(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """Windowed revenue by status of the collections with money (orders); none when no collection has both."""
    settings.parquet_silver_path.mkdir(parents=True, exist_ok=True)
    # event_date is the Parquet copy's partition column: Spark puts partition columns last, and whether it
    # finds the partitions at all depends on what the folder holds when the query starts. Declared last,
    # it lands in the same place either way, so every other column is read by its own name (declared in
    # the middle on an empty folder, the columns after it were read shifted by one).
    columns = tables.silver_columns(tables.attribute_columns(settings))
    silver_ddl = types.spark_ddl(tuple((n, k) for n, k in columns if n != "event_date"))
    with_money = [c for c in settings.collections if settings.collection(c).money]
    if not with_money or "status" not in {name for name, _ in columns}:
        log.info("no captured collection has money and a status column: no windowed aggregates")
        return []
    silver = (
        spark.readStream.schema(f"{silver_ddl}, event_date DATE")
        .option("basePath", str(settings.parquet_silver_path))
        .option("maxFilesPerTrigger", "200")
        .parquet(str(settings.parquet_silver_path))
        .where(F.col("collection").isin(*with_money))
        .where(F.col("op").isin(*ORDER_STATES))
        .withWatermark("event_time", settings.watermark_delay)
    )
    queries = []
    for granularity, duration in tables.WINDOWS.items():
        windowed = (
            silver.groupBy(F.window("event_time", duration).alias("window"), F.col("status"))
            .agg(
                F.count(F.lit(1)).alias("order_count"),  # order-state changes in the window with that status
                F.sum("amount").alias("revenue"),
                F.avg("amount").cast("decimal(18, 2)").alias("average_amount"),
                F.sum(F.col("is_high_value").cast("int")).alias("high_value_changes"),
            )
            .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"), "*")
            .drop("window")
        )
        writer = (
            windowed.writeStream.outputMode("append")
            .foreachBatch(AggregateWriter(settings, granularity))
            .option("checkpointLocation", str(settings.aggregates_checkpoint / granularity))
            .queryName(f"aggregates_{granularity}")
        )
        writer = (writer.trigger(availableNow=True) if available_now
                  else writer.trigger(processingTime=f"{max(settings.trigger_seconds, 5.0)} seconds"))
        queries.append(writer.start())
    return queries
