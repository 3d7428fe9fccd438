"""What the lake query marks, copied off its path: the quarantine and late_events tables, the Parquet copy
of silver and the enriched order lines.

The lake query (streaming/job.py) does per-row work only and commits bronze, silver and quality_checks.
Every message is in bronze with the reason it was kept out of silver, and every late change is in silver
with the watermark it arrived behind; these queries read those tables as Delta streams and write the
copies at their own pace, so a slow copy (an order with 100,000 items) never holds the next batch of any
collection back. The copies are declarative queries with Spark's own sinks (Delta, Parquet: exactly once
by their checkpoints); the order lines need lookups and are a foreachBatch appended once per batch.

A copy whose checkpoint is new is made again from its source: the Parquet copy and the order lines are
emptied first (they are wholly derived from silver); quarantine and late_events keep their rows, since
rows the lake query wrote before bronze and silver carried the marks are not marked.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.adapters.delta import LakeTable, ensure_table
from lakehouse.contracts import tables
from lakehouse.core.collections import CUSTOMERS, ORDERS, PRODUCTS
from lakehouse.core.config import Settings
from streaming.aggregates import derived_trigger, read_lake_table, revenue_checkpoint, start_writer
from streaming.enrichment import CUSTOMER_ATTRIBUTES, PRODUCT_ATTRIBUTES, order_lines
from streaming.lake_writer import OnceAppender, conform, lake_table_properties, writer_app_id
from streaming.look_back import checkpoint as look_back_checkpoint
from streaming.look_back import start_look_back

log = logging.getLogger(__name__)

QUARANTINE_COPY, LATE_COPY, PARQUET_COPY, LINES = "quarantine_copy", "late_events_copy", "parquet_copy", "order_lines"


def checkpoints(settings: Settings) -> dict[str, Path]:
    """The checkpoints of the queries off the lake query's path: the copies and the look-back rules."""
    marks = {name: settings.query_checkpoint(name) for name in (QUARANTINE_COPY, LATE_COPY, PARQUET_COPY, LINES)}
    return {**marks, tables.LOOK_BACK_FLAGS: look_back_checkpoint(settings)}


def enriches(settings: Settings) -> bool:
    """Order lines are made when orders carry money and a customer."""
    if ORDERS not in settings.collections:
        return False
    orders = settings.collection(ORDERS)
    return bool(orders.money) and "customer_id" in dict(orders.columns)


def _started_before(checkpoint: Path) -> bool:
    return checkpoint.exists() and any((checkpoint / "offsets").glob("[0-9]*"))


def _remake(settings: Settings, name: str) -> None:
    path = settings.table_path(name)
    shutil.rmtree(path, ignore_errors=True)
    ensure_table(path, tables.lake_schemas(tables.attribute_columns(settings))[name], lake_table_properties(name))


def reset_new_copies(settings: Settings) -> None:
    """A copy wholly derived from silver whose checkpoint is new is emptied, to be made again from silver's
    first version (and revenue by category, which reads the order lines, with it)."""
    marks = checkpoints(settings)
    if not _started_before(marks[PARQUET_COPY]) and settings.parquet_silver_path.exists():
        log.info("the Parquet copy of silver has no checkpoint: making it again from silver")
        shutil.rmtree(settings.parquet_silver_path)
    if enriches(settings) and not _started_before(marks[LINES]):
        lines = LakeTable.open(settings.table_path(tables.ORDER_LINES))
        if lines is not None and lines.count_rows():
            log.warning("the order lines have no checkpoint: making them (and revenue by category) again from silver")
            _remake(settings, tables.ORDER_LINES)
            for granularity in tables.CATEGORY_WINDOWS:
                shutil.rmtree(revenue_checkpoint(settings, granularity), ignore_errors=True)
            _remake(settings, tables.REVENUE_BY_CATEGORY)


def _sink(df: DataFrame, fmt: str, path: Path, checkpoint: Path, name: str, settings: Settings,
          available_now: bool, partition_by: str | None = None) -> Any:
    stream = (df.writeStream.format(fmt).outputMode("append").option("checkpointLocation", str(checkpoint))
              .queryName(name))
    if partition_by:
        stream = stream.partitionBy(partition_by)
    return derived_trigger(stream, settings, available_now).start(str(path))


class OrderLinesWriter:
    """foreachBatch over silver's stream: the orders placed, line by line, with the newest customer and
    product attributes silver holds when the lines are written."""

    def __init__(self, spark: SparkSession, settings: Settings, checkpoint: Path) -> None:
        self.spark = spark
        self.silver = settings.table_path(tables.SILVER)
        self.table = settings.table_path(tables.ORDER_LINES)
        self.appender = OnceAppender(writer_app_id(checkpoint))

    def _references(self) -> DataFrame:
        # TODO(#38): the references' newest attributes from Spark's state store instead of silver read again.
        wanted = ["collection", "op", "doc_id", *tables.SOURCE_ORDER,
                  *{*CUSTOMER_ATTRIBUTES.values(), *PRODUCT_ATTRIBUTES.values()}]
        silver = self.spark.read.format("delta").load(str(self.silver))
        return (silver.where(F.col("collection").isin(CUSTOMERS, PRODUCTS))
                .select(*(c for c in wanted if c in silver.columns)))

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        placed = (batch_df.where((F.col("collection") == ORDERS) & (F.col("op") == "insert"))
                  .withColumn("_row", F.monotonically_increasing_id()).persist(StorageLevel.MEMORY_AND_DISK))
        try:
            if placed.isEmpty():
                return
            references = self._references()
            self.appender.append(conform(order_lines(placed, lambda: references), tables.ORDER_LINES_COLUMNS),
                                 self.table, batch_id)
        finally:
            placed.unpersist()


def start_copies(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """The copies' queries, over the lake's bronze and silver (which exist, empty, before any is written)."""
    reset_new_copies(settings)
    marks = checkpoints(settings)
    bronze = read_lake_table(spark, settings, tables.BRONZE)
    silver = read_lake_table(spark, settings, tables.SILVER)
    quarantined = conform(bronze.where(F.col("quarantine_reason").isNotNull()), tables.QUARANTINE_COLUMNS)
    late = conform(silver.where(F.col(tables.LATE_WATERMARK).isNotNull())
                   .withColumn("watermark", F.col(tables.LATE_WATERMARK)), tables.LATE_EVENTS_COLUMNS)
    silver_columns = tables.silver_columns(tables.attribute_columns(settings))
    queries = [
        _sink(quarantined, "delta", settings.table_path(tables.QUARANTINE), marks[QUARANTINE_COPY], QUARANTINE_COPY,
              settings, available_now),
        _sink(late, "delta", settings.table_path(tables.LATE_EVENTS), marks[LATE_COPY], LATE_COPY, settings,
              available_now),
        _sink(conform(silver, silver_columns), "parquet", settings.parquet_silver_path, marks[PARQUET_COPY],
              PARQUET_COPY, settings, available_now, partition_by="event_date"),
    ]
    queries += start_look_back(silver, settings, available_now)
    if enriches(settings):
        queries.append(start_writer(silver, OrderLinesWriter(spark, settings, marks[LINES]), marks[LINES], LINES,
                                    settings, available_now))
    return queries
