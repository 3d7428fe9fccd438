"""Windowed order aggregates: revenue, count, average and high-value count per tumbling window and
status, and revenue per window and product category; with an event-time watermark, written in append mode
(a window is final once written).

They read the Parquet copies of silver and of the enriched order lines with Spark's built-in file stream
source, not Kafka again: one Kafka read per pipeline, and the aggregates see exactly the parsed, typed
rows the lake has. The inventory alerts and customer sessions read silver's copy the same way.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.adapters.delta import append_once, conform, writer_app_id
from lakehouse.contracts import tables, types
from lakehouse.contracts.events import DOCUMENT_OPERATIONS
from lakehouse.core.config import Settings

log = logging.getLogger(__name__)

# Changes that carry an order's state; deletes and snapshot_end markers carry no amount.
ORDER_STATES = DOCUMENT_OPERATIONS
UNKNOWN_CATEGORY = "(unknown)"


class AggregateWriter:
    """foreachBatch of a windowed query: its rows, stamped with the granularity, appended once per batch."""

    def __init__(self, settings: Settings, table: str, columns: types.Columns, granularity: str,
                 checkpoint: Path) -> None:
        self.table = settings.table_path(table)
        self.granularity = granularity
        self.app_id = writer_app_id(checkpoint)
        self.schema = types.arrow_schema(columns)

    def __call__(self, batch_df: Any, batch_id: int) -> None:
        rows = batch_df.toArrow()  # materialise always (see BatchWriter)
        if rows.num_rows == 0:
            return
        now = pa.scalar(int(time.time() * 1_000_000), pa.timestamp("us", tz="UTC"))
        if "granularity" in self.schema.names:
            rows = rows.append_column("granularity", pa.array([self.granularity] * rows.num_rows))
        rows = rows.append_column("computed_at", pa.array([now] * rows.num_rows))
        append_once(self.table, conform(rows, self.schema), self.app_id, batch_id)


def read_lake_copy(spark: SparkSession, settings: Settings, name: str, columns: types.Columns) -> DataFrame:
    """A stream of the rows the lake query writes to a table's Parquet copy (lake/parquet/<name>)."""
    folder = settings.parquet_path(name)
    folder.mkdir(parents=True, exist_ok=True)
    # event_date is the Parquet copy's partition column: Spark puts partition columns last, and whether it
    # finds the partitions at all depends on what the folder holds when the query starts. Declared last,
    # it lands in the same place either way, so every other column is read by its own name (declared in
    # the middle on an empty folder, the columns after it were read shifted by one).
    ddl = types.spark_ddl(tuple((n, k) for n, k in columns if n != "event_date"))
    return (spark.readStream.schema(f"{ddl}, event_date DATE")
            .option("basePath", str(folder))
            .option("maxFilesPerTrigger", "200")
            .parquet(str(folder)))


def read_silver(spark: SparkSession, settings: Settings) -> DataFrame:
    return read_lake_copy(spark, settings, "silver", tables.silver_columns(tables.attribute_columns(settings)))


def start_writer(df: DataFrame, writer: Any, checkpoint: Path, name: str, settings: Settings,
                 available_now: bool, output_mode: str = "append") -> Any:
    """Start a query over the lake's Parquet copies: drain and stop (available_now), or every trigger (at
    least 5 s apart: each trigger lists the folder)."""
    stream = (df.writeStream.outputMode(output_mode).foreachBatch(writer)
              .option("checkpointLocation", str(checkpoint)).queryName(name))
    stream = (stream.trigger(availableNow=True) if available_now
              else stream.trigger(processingTime=f"{max(settings.trigger_seconds, 5.0)} seconds"))
    return stream.start()


def start_aggregates(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """Windowed revenue by status of the collections with money (orders); none when no collection has both."""
    columns = tables.silver_columns(tables.attribute_columns(settings))
    with_money = [c for c in settings.collections if settings.collection(c).money]
    if not with_money or "status" not in {name for name, _ in columns}:
        log.info("no captured collection has money and a status column: no windowed aggregates")
        return []
    silver = (
        read_silver(spark, settings)
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
        checkpoint = settings.aggregates_checkpoint / granularity
        queries.append(start_writer(
            windowed, AggregateWriter(settings, tables.AGGREGATES, tables.AGGREGATES_COLUMNS, granularity, checkpoint),
            checkpoint, f"aggregates_{granularity}", settings, available_now))
    return queries


def revenue_checkpoint(settings: Settings, granularity: str) -> Path:
    return settings.query_checkpoint(f"{tables.REVENUE_BY_CATEGORY}_{granularity}")


def start_revenue_by_category(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """Revenue of the orders placed per window, product category and currency, from the enriched order
    lines (streaming/enrichment.py). A line of a product the lake did not know counts as '(unknown)'."""
    if "orders" not in settings.collections:
        return []
    lines = (read_lake_copy(spark, settings, tables.ORDER_LINES, tables.ORDER_LINES_COLUMNS)
             .withWatermark("event_time", settings.watermark_delay)
             .withColumn("category", F.coalesce("product_category", F.lit(UNKNOWN_CATEGORY))))
    queries = []
    for granularity, duration in tables.CATEGORY_WINDOWS.items():
        windowed = (
            lines.groupBy(F.window("event_time", duration).alias("window"), "category", "currency")
            .agg(F.sum(F.col("first_in_category").cast("long")).alias("orders"), F.sum("qty").alias("items"),
                 F.sum("line_revenue").alias("revenue"))
            .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"), "*")
            .drop("window")
        )
        checkpoint = revenue_checkpoint(settings, granularity)
        writer = AggregateWriter(settings, tables.REVENUE_BY_CATEGORY, tables.REVENUE_BY_CATEGORY_COLUMNS,
                                 granularity, checkpoint)
        queries.append(start_writer(windowed, writer, checkpoint, f"revenue_by_category_{granularity}", settings,
                                    available_now))
    return queries
