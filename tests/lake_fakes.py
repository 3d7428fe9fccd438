"""Silver rows and lakes made by hand, for warehouse tests that need no Spark."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from lakehouse.contracts import tables
from lakehouse.core.config import Settings

SCHEMA = tables.silver_schema(Settings())  # explicit: a batch of deletes only must not infer null types


def silver_row(seq: int, doc: int, op: str, status: str | None, amount: str | None = None,
               customer: str | None = None) -> dict:
    """Change number `seq` (its cluster time and Kafka offset derive from it) to document `doc`."""
    document = None if op == "delete" else json.dumps(
        {"_id": doc, "order_id": f"o{doc}", "status": status, "amount": amount,
         "created_at": {"$date": "2026-11-20T10:15:00Z"}})
    return {
        "change_id": f"c{seq}", "op": op, "collection": "orders", "doc_id": str(doc), "key": f"o{doc}",
        "cluster_time_s": 1000 + seq // 3, "cluster_time_inc": seq % 3, "txn_op_index": 0,
        "event_time": datetime.fromtimestamp(1000 + seq // 3, UTC), "resume_token": f"{seq:04x}",
        "full_document": document, "customer_id": customer, "status": status, "amount_raw": amount,
        "amount": None if amount is None else Decimal(amount), "amount_currency": None if amount is None else "USD",
        "is_high_value": None if amount is None else Decimal(amount) >= 1000,
        "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": seq,
    }


def lake_settings(tmp: Path) -> Settings:
    return Settings.from_env(lake_path=tmp / "lake", warehouse_path=tmp / "wh.duckdb", state_dir=tmp / "state")


def append_silver(settings: Settings, rows: list[dict]) -> None:
    write_deltalake(str(settings.table_path(tables.SILVER)), pa.Table.from_pylist(rows, schema=SCHEMA), mode="append")
