"""The business rules of collections.toml as the streaming job judges them (streaming/quality.py), in a
local Spark on batches shaped like silver, with the state read from a silver Delta table as the job does:
a batch judged again after a restart (its silver rows written or not) gets the same verdicts."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.core.collections import DEFAULT_SPEC, load_spec
from streaming.quality import ROW, QualityJudge

pytestmark = pytest.mark.spark

SPEC = load_spec(DEFAULT_SPEC)
SPECS = tuple(SPEC.get(name) for name in ("orders", "customers", "products"))
SCHEMA = pa.schema([
    ("collection", pa.string()), ("op", pa.string()), ("doc_id", pa.string()), ("change_id", pa.string()),
    ("full_document", pa.string()), ("event_date", pa.date32()), ("cluster_time_s", pa.int64()),
    ("cluster_time_inc", pa.int64()), ("txn_op_index", pa.int64()), ("customer_id", pa.string()),
    ("status", pa.string()), ("amount_raw", pa.string()), ("amount", pa.decimal128(18, 2)),
    ("currency", pa.string()), ("batch_id", pa.int64()),
])
_clock = iter(range(1, 10**9))


def order(doc: str, status: str | None = "created", *, op: str = "insert", customer: str | None = "cust-1",
          skus: tuple[str, ...] = ("sku-1",), amount: str | None = "10.00", currency: str = "USD",
          at: int | None = None, change: str | None = None) -> dict[str, Any]:
    t = at if at is not None else next(_clock)
    document = None if op == "delete" else json.dumps(
        {"_id": doc, "order_id": doc, **({"customer_id": customer} if customer else {}), "status": status,
         "items": [{"sku": s} for s in skus]})
    parsed = None
    if amount not in (None, "", "n/a"):
        parsed = Decimal(amount)
    return {"collection": "orders", "op": op, "doc_id": json.dumps(doc), "change_id": change or f"{doc}@{t}",
            "full_document": document, "event_date": dt.date(2026, 11, 24), "cluster_time_s": t,
            "cluster_time_inc": 1, "txn_op_index": 0, "customer_id": customer if op != "delete" else None,
            "status": status if op != "delete" else None, "amount_raw": amount, "amount": parsed,
            "currency": currency}


def reference(collection: str, key: str, op: str = "insert") -> dict[str, Any]:
    t = next(_clock)
    return {"collection": collection, "op": op, "doc_id": json.dumps(key), "change_id": f"{key}@{t}",
            "full_document": None if op == "delete" else json.dumps({"_id": key}),
            "event_date": dt.date(2026, 11, 24), "cluster_time_s": t, "cluster_time_inc": 1, "txn_op_index": 0}


def table(spark: SparkSession, rows: list[dict[str, Any]], batch_id: int = 0) -> DataFrame:
    data = pa.Table.from_pylist([{**r, "batch_id": batch_id} for r in rows], schema=SCHEMA)
    return spark.createDataFrame(data).withColumn(ROW, F.monotonically_increasing_id())


class Judge:
    """The judge with silver as a Delta table in tmp_path, as the streaming job reads it."""

    def __init__(self, spark: SparkSession, tmp_path: Path) -> None:
        self.spark, self.silver, self.inner = spark, tmp_path / "silver", QualityJudge(SPECS)

    def history(self) -> DataFrame | None:
        return self.spark.read.format("delta").load(str(self.silver)) if self.silver.exists() else None

    def judge(self, rows: list[dict[str, Any]], batch_id: int = 0) -> tuple[list[tuple[Any, Any]], DataFrame]:
        judged = self.inner.judge(table(self.spark, rows, batch_id), self.history)
        out = judged.rows.orderBy(ROW).select("quarantine_reason", "quality_flags").collect()
        return [(r[0], r[1]) for r in out], judged.checks

    def remember(self, rows: list[dict[str, Any]], verdict: list[tuple[Any, Any]], batch_id: int) -> None:
        kept = [r for r, (reason, _) in zip(rows, verdict, strict=True) if reason is None]
        if kept:
            table(self.spark, kept, batch_id).drop(ROW).write.format("delta").mode("append").save(str(self.silver))


@pytest.fixture
def judge(spark_local: SparkSession, tmp_path: Path) -> Judge:
    return Judge(spark_local, tmp_path)


def verdicts(j: Judge, rows: list[dict[str, Any]], batch_id: int = 0) -> list[tuple[str | None, str | None]]:
    verdict, _ = j.judge(rows, batch_id)
    j.remember(rows, verdict, batch_id)
    return verdict


def test_row_rules_quarantine_or_flag_with_the_rules_name_and_deletes_are_not_judged(judge: Judge) -> None:
    j = judge
    refs = [reference("customers", "cust-1"), reference("products", "sku-1")]
    result = verdicts(j, [*refs,
                          order("o1"),
                          order("o2", customer=None),
                          order("o3", status="lost"),
                          order("o4", amount="-5"),
                          order("o5", amount=""),
                          order("o6", amount="n/a"),
                          order("o7", currency="XTS"),
                          order("o1", op="delete")])
    assert result[:3] == [(None, None)] * 3
    assert result[3] == (None, "order_required")  # no customer_id: nothing to look up for customer_exists
    assert result[4][0] == "quality rule known_status: status 'lost' is not one of created, paid, shipped, " \
                           "delivered, cancelled"
    assert result[5] == (None, "positive_amount")
    assert result[6] == (None, "amount_present")
    assert result[7] == (None, "amount_parses")
    assert result[8] == (None, "known_currency")
    assert result[9] == (None, None)  # a delete carries no document to judge


def test_counts_per_rule_cover_every_judged_change(judge: Judge) -> None:
    _, checks = judge.judge([reference("customers", "cust-1"), reference("products", "sku-1"), order("a"),
                             order("b", currency="XTS"), order("a", op="delete")])
    totals = {r["rule"]: [r["checked"], r["failed"]] for r in checks.groupBy("rule").agg(
        F.sum("checked").alias("checked"), F.sum("failed").alias("failed")).collect()}
    assert totals["known_currency"] == [2, 1]
    assert totals["order_required"] == [2, 0]
    assert set(totals) == {r.name for r in SPEC.get("orders").rules}


def test_status_moves_are_judged_against_the_previous_version_in_source_order(judge: Judge) -> None:
    j = judge
    verdicts(j, [reference("customers", "cust-1"), reference("products", "sku-1")])
    assert verdicts(j, [order("o", "created", at=100), order("o", "paid", op="update", at=110)]) == [(None, None)] * 2
    # Next batch: paid -> created is backwards; shipped after it is judged against created (a skip).
    assert verdicts(j, [order("o", "created", op="update", at=120)], 1) == [(None, "status_transition")]
    assert verdicts(j, [order("o", "delivered", op="update", at=130)], 2) == [(None, "status_transition")]
    # Late: a change older than what came before is judged against its own predecessor (created@100).
    assert verdicts(j, [order("o", "paid", op="update", at=105)], 3) == [(None, None)]
    # A duplicate is not its own previous version: paid@110 again follows paid@105 (staying put).
    assert verdicts(j, [order("o", "paid", op="update", at=110, change="o@110")], 4) == [(None, None)]
    # Any status may move to cancelled; after a delete the document starts afresh.
    assert verdicts(j, [order("o", "cancelled", op="update", at=140)], 5) == [(None, None)]
    assert verdicts(j, [order("o", op="delete", at=150), order("o", "shipped", at=160)], 6) == [(None, None)] * 2


def test_references_use_the_lakes_live_documents_including_this_batch(judge: Judge) -> None:
    j = judge
    same_batch = verdicts(j, [order("o1", customer="cust-9", skus=("sku-9", "sku-8")),
                              reference("customers", "cust-9"), reference("products", "sku-9")])
    assert same_batch[0] == (None, "products_exist")  # sku-8 exists nowhere
    verdicts(j, [reference("customers", "cust-9", op="delete")], 1)
    assert verdicts(j, [order("o2", customer="cust-9", skus=("sku-9",))], 2) == [(None, "customer_exists")]


def test_a_replayed_batch_after_a_restart_gets_the_same_verdicts(judge: Judge) -> None:
    """A batch judged again after a kill, before or after its silver rows were written, gets the verdicts
    of its first run."""
    rng = random.Random(7)
    statuses = ["created", "paid", "shipped", "delivered", "cancelled", "lost"]
    batches = []
    times = iter(rng.sample(range(10_000), 4 * 25))  # one cluster time per change, in no particular order
    for _ in range(4):
        rows = [reference("customers", f"cust-{rng.randrange(4)}"), reference("products", f"sku-{rng.randrange(4)}")]
        for _ in range(25):
            doc = f"o{rng.randrange(6)}"
            rows.append(order(doc, rng.choice(statuses), op=rng.choice(["insert", "update", "update", "delete"]),
                              customer=f"cust-{rng.randrange(5)}", skus=(f"sku-{rng.randrange(5)}",),
                              at=next(times)))
        batches.append(rows)
    expected = []
    for b, rows in enumerate(batches):
        verdict, _ = judge.judge(rows, b)
        expected.append(verdict)
        judge.remember(rows, verdict, b)
        assert judge.judge(rows, b)[0] == verdict  # killed after the silver write: silver holds it too
    assert any(flags for verdict in expected for _, flags in verdict)
    assert any(reason for verdict in expected for reason, _ in verdict)
