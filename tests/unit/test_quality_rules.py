"""The business rules of collections.toml as the streaming job judges them: the row rules in the lake
query (streaming/quality.py), in a local Spark on batches shaped like silver; the rules that look back
(streaming/look_back.py) from the records Spark makes of silver's changes, judged key by key with the state
carried from batch to batch as Spark's state store carries it."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.core.collections import DEFAULT_SPEC, load_spec
from streaming.look_back import _records, judge_key, look_back_rules
from streaming.quality import QualityJudge

ROW = "_row"  # the order the rows were given in

pytestmark = pytest.mark.spark

SPEC = load_spec(DEFAULT_SPEC)
SPECS = tuple(SPEC.get(name) for name in ("orders", "customers", "products"))
SCHEMA = pa.schema([
    ("collection", pa.string()), ("op", pa.string()), ("doc_id", pa.string()), ("change_id", pa.string()),
    ("full_document", pa.string()), ("event_date", pa.date32()), ("cluster_time_s", pa.int64()),
    ("cluster_time_inc", pa.int64()), ("txn_op_index", pa.int64()), ("customer_id", pa.string()),
    ("status", pa.string()), ("amount_raw", pa.string()), ("amount", pa.decimal128(18, 2)),
    ("currency", pa.string()), ("batch_id", pa.int64()), ("key", pa.string()),
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
    return {"collection": "orders", "op": op, "doc_id": json.dumps(doc), "key": doc,
            "change_id": change or f"{doc}@{t}",
            "full_document": document, "event_date": dt.date(2026, 11, 24), "cluster_time_s": t,
            "cluster_time_inc": 1, "txn_op_index": 0, "customer_id": customer if op != "delete" else None,
            "status": status if op != "delete" else None, "amount_raw": amount, "amount": parsed,
            "currency": currency}


def reference(collection: str, key: str, op: str = "insert") -> dict[str, Any]:
    t = next(_clock)
    return {"collection": collection, "op": op, "doc_id": json.dumps(key), "key": key, "change_id": f"{key}@{t}",
            "full_document": None if op == "delete" else json.dumps({"_id": key}),
            "event_date": dt.date(2026, 11, 24), "cluster_time_s": t, "cluster_time_inc": 1, "txn_op_index": 0}


def table(spark: SparkSession, rows: list[dict[str, Any]], batch_id: int = 0) -> DataFrame:
    data = pa.Table.from_pylist([{**r, "batch_id": batch_id} for r in rows], schema=SCHEMA)
    return spark.createDataFrame(data).withColumn(ROW, F.monotonically_increasing_id())


class Judge:
    """The row rules as the lake query judges a batch."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark, self.inner = spark, QualityJudge(SPECS)

    def judge(self, rows: list[dict[str, Any]], batch_id: int = 0) -> tuple[list[tuple[Any, Any]], DataFrame]:
        judged = self.inner.judge(table(self.spark, rows, batch_id))
        out = judged.rows.orderBy(ROW).select("quarantine_reason", "quality_flags").collect()
        return [(r[0], r[1]) for r in out], judged.checks


@pytest.fixture
def judge(spark_local: SparkSession) -> Judge:
    return Judge(spark_local)


def verdicts(j: Judge, rows: list[dict[str, Any]], batch_id: int = 0) -> list[tuple[str | None, str | None]]:
    return j.judge(rows, batch_id)[0]


class LookBack:
    """The look-back rules over batches of silver rows: Spark makes the keyed records, then each key is
    judged with its state, which is kept between batches as the state store keeps it."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark, self.rules, self.state = spark, look_back_rules(SPECS), {}

    def judge(self, rows: list[dict[str, Any]]) -> dict[str, list[tuple[str, str | None]]]:
        """change_id -> (rule, failure detail or None) per verdict, sorted."""
        records = [r.asDict() for r in _records(table(self.spark, rows), self.rules).collect()]
        keys: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            keys.setdefault((record["group_collection"], record["group_key"]), []).append(record)
        out: dict[str, list[tuple[str, str | None]]] = {}
        for key, mine in keys.items():
            found, self.state[key] = judge_key(mine, self.state.get(key), self.rules)
            for verdict in found:
                out.setdefault(verdict["change_id"], []).append((verdict["rule"], verdict["detail"]))
        return {change: sorted(v, key=lambda x: (x[0], x[1] or "")) for change, v in out.items()}

    def flags(self, rows: list[dict[str, Any]]) -> list[str | None]:
        """Per row, the look-back rules it broke (comma-separated, sorted), as the warehouse shows them."""
        found = self.judge(rows)
        return [",".join(sorted({rule for rule, detail in found.get(r["change_id"], []) if detail})) or None
                for r in rows]


@pytest.fixture
def look_back(spark_local: SparkSession) -> LookBack:
    return LookBack(spark_local)


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
    assert set(totals) == {r.name for r in SPEC.get("orders").rules if r.kind not in ("transitions", "references")}


def transition(j: LookBack, row: dict[str, Any]) -> str | None:
    """The transitions rule's verdict on a change (None: passed), judged alone in a batch."""
    found = [detail for rule, detail in j.judge([row])[row["change_id"]] if rule == "status_transition"]
    assert len(found) == 1, found
    return found[0]


def test_status_moves_are_judged_against_the_newest_earlier_version_in_source_order(look_back: LookBack) -> None:
    j = look_back
    j.flags([reference("customers", "cust-1"), reference("products", "sku-1")])
    assert j.flags([order("o", "created", at=100), order("o", "paid", op="update", at=110)]) == [None, None]
    # Next batch: paid -> created is backwards; delivered after it is judged against created (a skip).
    assert j.flags([order("o", "created", op="update", at=120)]) == ["status_transition"]
    moved = order("o", "delivered", op="update", at=130)
    assert transition(j, moved) == "status moved 'created' -> 'delivered'"
    # Late (older than the newest version judged) or a duplicate: checked, not judged; the state stays.
    late = order("o", "paid", op="update", at=105)
    assert transition(j, late) is None
    assert j.flags([order("o", "paid", op="update", at=110, change="o@110")]) == [None]
    # Any status may move to cancelled; after a delete the document starts afresh.
    assert j.flags([order("o", "cancelled", op="update", at=140)]) == [None]
    assert j.flags([order("o", op="delete", at=150), order("o", "shipped", at=160)]) == [None, None]
    # Within one batch the versions are taken in source order, whatever order they came in.
    assert j.flags([order("p", "paid", op="update", at=210), order("p", "created", at=200)]) == [None, None]


def test_references_use_the_lakes_live_documents_including_this_batch(look_back: LookBack) -> None:
    j = look_back
    first = order("o1", customer="cust-9", skus=("sku-9", "sku-8", "sku-7"))
    found = j.judge([first, reference("customers", "cust-9"), reference("products", "sku-9")])
    assert [v for v in found[first["change_id"]] if v[1]] == [("products_exist", '"sku-7"'),
                                                               ("products_exist", '"sku-8"')]
    assert ("customer_exists", None) in found[first["change_id"]]
    j.judge([reference("customers", "cust-9", op="delete")])
    assert j.flags([order("o2", customer="cust-9", skus=("sku-9",))]) == ["customer_exists"]
    # A change without the field is checked and passes.
    bare = order("o3", customer=None, skus=())
    assert j.judge([bare])[bare["change_id"]] == [("customer_exists", None), ("products_exist", None),
                                                  ("status_transition", None)]


def test_a_replayed_batch_after_a_restart_gets_the_same_verdicts(look_back: LookBack) -> None:
    """A batch judged again after a kill (Spark's state store gives back the state of the batch before)
    gets the verdicts of its first run."""
    rng = random.Random(7)
    statuses = ["created", "paid", "shipped", "delivered", "cancelled", "lost"]
    times = iter(rng.sample(range(10_000), 4 * 25))  # one cluster time per change, in no particular order
    flagged = 0
    for _ in range(4):
        rows = [reference("customers", f"cust-{rng.randrange(4)}"), reference("products", f"sku-{rng.randrange(4)}")]
        for _ in range(25):
            doc = f"o{rng.randrange(6)}"
            rows.append(order(doc, rng.choice(statuses), op=rng.choice(["insert", "update", "update", "delete"]),
                              customer=f"cust-{rng.randrange(5)}", skus=(f"sku-{rng.randrange(5)}",),
                              at=next(times)))
        before = dict(look_back.state)
        first = look_back.judge(rows)
        look_back.state = before
        assert look_back.judge(rows) == first
        flagged += sum(1 for verdicts in first.values() for _, detail in verdicts if detail)
    assert flagged
