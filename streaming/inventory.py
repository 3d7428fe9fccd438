"""Inventory alerts: a stateful streaming query over the products' changes in silver that writes one row
each time a product's stock crosses a threshold (INVENTORY_LOW, INVENTORY_CRITICAL, 0), and one when it
is restocked above the low threshold: one alert per crossing, not per change.

The state per product is its level and the source position of the change that set it, kept in Spark's
checkpointed state store (applyInPandasWithState). Changes are taken in source order; one at or before
the position in state (a late arrival, a duplicate, a replay) changes nothing, so the alerts follow the
product's real history. The writer appends each batch once under the query's checkpoint (lake_writer.OnceAppender),
so a restart in the middle neither repeats nor loses an alert.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupStateTimeout

from lakehouse.contracts import tables, types
from lakehouse.core.collections import PRODUCTS
from lakehouse.core.config import Settings
from streaming.aggregates import ORDER_STATES, AggregateWriter, start_writer, stream_silver
from streaming.enrichment import readable_id

OK, LOW, CRITICAL, OUT_OF_STOCK, RESTOCKED = "ok", "low", "critical", "out_of_stock", "restocked"
_ORDER = tables.SOURCE_ORDER
_INPUT = ("doc_id", "name", "stock", "event_time", "change_id", *_ORDER)
_ALERT_COLUMNS = tuple((n, k) for n, k in tables.INVENTORY_ALERTS_COLUMNS if n != "computed_at")
_STATE_DDL = "level STRING, cluster_time_s BIGINT, cluster_time_inc BIGINT, txn_op_index BIGINT"


def level_of(stock: int, low: int, critical: int) -> str:
    if stock <= 0:
        return OUT_OF_STOCK
    if stock <= critical:
        return CRITICAL
    return LOW if stock <= low else OK


def threshold_of(level: str, low: int, critical: int) -> int:
    """The threshold a move to `level` crossed (restocked: back above low)."""
    return {OUT_OF_STOCK: 0, CRITICAL: critical, LOW: low}.get(level, low)


def crossings(changes: Iterable[dict[str, Any]], state: tuple[str, int, int, int] | None, low: int,
              critical: int) -> tuple[list[dict[str, Any]], tuple[str, int, int, int] | None]:
    """The alerts a product's changes raise, given its state (level, source position); and the new state.
    A product first seen below a threshold raises that level's alert."""
    alerts = []
    for change in sorted(changes, key=lambda c: tuple(c[k] for k in _ORDER)):
        position = tuple(int(change[k]) for k in _ORDER)
        if state is not None and position <= tuple(state[1:]):
            continue  # already taken into account: late, duplicate or replayed
        previous = state[0] if state is not None else OK
        level = level_of(int(change["stock"]), low, critical)
        if level != previous:
            shown = RESTOCKED if level == OK else level
            alerts.append({"product_id": readable_id(json.loads(change["doc_id"])), "name": change["name"],
                           "stock": int(change["stock"]),
                           "threshold": threshold_of(level, low, critical), "level": shown,
                           "previous_level": previous, "event_time": change["event_time"],
                           "change_id": change["change_id"]})
        state = (level, *position)  # type: ignore[assignment]
    return alerts, state


def _alerts_function(low: int, critical: int) -> Any:
    import pandas as pd

    columns = [name for name, _ in _ALERT_COLUMNS]

    def alerts(key: tuple[Any, ...], frames: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        changes = [row for frame in frames for row in frame.to_dict("records")]
        found, new_state = crossings(changes, tuple(state.get) if state.exists else None, low, critical)
        if new_state is not None:
            state.update(new_state)
        yield pd.DataFrame(found, columns=columns)

    return alerts


def checkpoint(settings: Settings) -> Path:
    return settings.query_checkpoint(tables.INVENTORY_ALERTS)


def start_inventory_alerts(spark: SparkSession, settings: Settings, available_now: bool) -> list[Any]:
    """The alerts query, when products (with a stock column) are captured."""
    if PRODUCTS not in settings.collections or "stock" not in dict(settings.collection(PRODUCTS).columns):
        return []
    changes = (stream_silver(spark, settings)
               .where((F.col("collection") == PRODUCTS) & F.col("op").isin(*ORDER_STATES) & F.col("stock").isNotNull())
               .select(*_INPUT))
    alerts = changes.groupBy("doc_id").applyInPandasWithState(
        _alerts_function(settings.inventory_low, settings.inventory_critical), types.spark_ddl(_ALERT_COLUMNS),
        _STATE_DDL, "append", GroupStateTimeout.NoTimeout)
    writer = AggregateWriter(settings, tables.INVENTORY_ALERTS, tables.INVENTORY_ALERTS_COLUMNS, "",
                             checkpoint(settings))
    return [start_writer(alerts, writer, checkpoint(settings), tables.INVENTORY_ALERTS, settings, available_now)]
