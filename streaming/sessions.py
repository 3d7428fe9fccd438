"""Customer activity: session windows per customer over the orders' changes in silver (a session ends
after SESSION_GAP without a change), with the changes, the orders placed and what they came to.

Late data: the query runs on event time with the lake's watermark (WATERMARK_DELAY). A session is written
once, when the watermark passes its end (last activity + gap), so every row of customer_sessions is final;
a change that arrives after the watermark has passed its time does not join a session (it stays in
silver, and the lake query records it in late_events). Snapshot rows are not activity and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse.contracts import tables
from lakehouse.core.collections import ORDERS
from lakehouse.core.config import Settings
from streaming.aggregates import AggregateWriter, start_writer, stream_silver

ACTIVITY = ("insert", "update", "replace", "delete")


def checkpoint(settings: Settings) -> Path:
    return settings.query_checkpoint(tables.CUSTOMER_SESSIONS)


def start_customer_sessions(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    if ORDERS not in settings.collections or "customer_id" not in dict(settings.collection(ORDERS).columns):
        return []
    placed = F.col("op") == "insert"
    sessions = (
        stream_silver(spark, settings)
        .where((F.col("collection") == ORDERS) & F.col("op").isin(*ACTIVITY) & F.col("customer_id").isNotNull())
        .withWatermark("event_time", settings.watermark_delay)
        .groupBy(F.session_window("event_time", settings.session_gap).alias("session"), "customer_id")
        .agg(F.max("event_time").alias("last_activity"), F.count(F.lit(1)).alias("changes"),
             F.sum(placed.cast("long")).alias("orders_placed"),
             F.sum(F.when(placed, F.col("amount"))).alias("amount_spent"),
             F.min(F.when(placed, F.col("amount_currency"))).alias("lowest"),
             F.max(F.when(placed, F.col("amount_currency"))).alias("highest"))
        .select("customer_id", F.col("session.start").alias("session_start"),
                F.col("session.end").alias("session_end"), "last_activity", "changes",
                F.coalesce("orders_placed", F.lit(0)).alias("orders_placed"), "amount_spent",
                # amounts are not converted: a session whose orders were in several currencies says "mixed"
                F.when(F.col("lowest") == F.col("highest"), F.col("lowest"))
                .when(F.col("lowest").isNotNull(), F.lit("mixed")).alias("currency"))
    )
    writer = AggregateWriter(settings, tables.CUSTOMER_SESSIONS, tables.CUSTOMER_SESSIONS_COLUMNS, "",
                             checkpoint(settings))
    return [start_writer(sessions, writer, checkpoint(settings), tables.CUSTOMER_SESSIONS, settings, available_now)]
