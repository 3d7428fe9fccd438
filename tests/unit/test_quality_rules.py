"""The business rules of collections.toml as the streaming job judges them (streaming/quality.py), on
Arrow tables shaped like silver; the state they keep across batches, and read back from silver after a
restart, gives the same verdicts."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.core.collections import DEFAULT_SPEC, load_spec
from streaming.quality import QualityJudge

pytestmark = pytest.mark.unit

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


def table(rows: list[dict[str, Any]], batch_id: int = 0) -> pa.Table:
    return pa.Table.from_pylist([{**r, "batch_id": batch_id} for r in rows], schema=SCHEMA)


def judge(tmp_path: Path) -> QualityJudge:
    return QualityJudge(SPECS, tmp_path / "silver")


def verdicts(j: QualityJudge, rows: list[dict[str, Any]], batch_id: int = 0) -> list[tuple[str | None, str | None]]:
    silver = table(rows, batch_id)
    verdict = j.judge(silver, batch_id)
    kept = [not reason for reason in verdict.quarantine_reason.to_pylist()]
    j.remember(silver.filter(pa.array(kept)))
    return list(zip(verdict.quarantine_reason.to_pylist(), verdict.flags.to_pylist(), strict=True))


def test_row_rules_quarantine_or_flag_with_the_rules_name_and_deletes_are_not_judged(tmp_path: Path) -> None:
    j = judge(tmp_path)
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


def test_counts_per_rule_cover_every_judged_change(tmp_path: Path) -> None:
    j = judge(tmp_path)
    silver = table([reference("customers", "cust-1"), reference("products", "sku-1"), order("a"),
                    order("b", currency="XTS"), order("a", op="delete")])
    totals = j.judge(silver, 0).totals()
    assert totals["known_currency"] == [2, 1]
    assert totals["order_required"] == [2, 0]
    assert set(totals) == {r.name for r in SPEC.get("orders").rules}


def test_status_moves_are_judged_against_the_previous_version_in_source_order(tmp_path: Path) -> None:
    j = judge(tmp_path)
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


def test_references_use_the_lakes_live_documents_including_this_batch(tmp_path: Path) -> None:
    j = judge(tmp_path)
    same_batch = verdicts(j, [order("o1", customer="cust-9", skus=("sku-9", "sku-8")),
                              reference("customers", "cust-9"), reference("products", "sku-9")])
    assert same_batch[0] == (None, "products_exist")  # sku-8 exists nowhere
    verdicts(j, [reference("customers", "cust-9", op="delete")], 1)
    assert verdicts(j, [order("o2", customer="cust-9", skus=("sku-9",))], 2) == [(None, "customer_exists")]


def test_a_replayed_batch_after_a_restart_gets_the_same_verdicts(tmp_path: Path) -> None:
    """State read back from silver (the batches before the one judged) equals the state kept in memory."""
    rng = random.Random(7)
    statuses = ["created", "paid", "shipped", "delivered", "cancelled", "lost"]
    batches = []
    times = iter(rng.sample(range(10_000), 6 * 25))  # one cluster time per change, in no particular order
    for _ in range(6):
        rows = [reference("customers", f"cust-{rng.randrange(4)}"), reference("products", f"sku-{rng.randrange(4)}")]
        for _ in range(25):
            doc = f"o{rng.randrange(6)}"
            rows.append(order(doc, rng.choice(statuses), op=rng.choice(["insert", "update", "update", "delete"]),
                              customer=f"cust-{rng.randrange(5)}", skus=(f"sku-{rng.randrange(5)}",),
                              at=next(times)))
        batches.append(rows)
    silver = tmp_path / "silver"
    running = QualityJudge(SPECS, silver)
    expected = []

    def restarted(b: int) -> tuple[list, list]:
        again = QualityJudge(SPECS, silver).judge(table(batches[b], b), b)
        return again.quarantine_reason.to_pylist(), again.flags.to_pylist()

    for b, rows in enumerate(batches):
        data = table(rows, b)
        verdict = running.judge(data, b)
        expected.append((verdict.quarantine_reason.to_pylist(), verdict.flags.to_pylist()))
        if b:  # killed before the batch's silver write, then restarted: silver holds the batches before it
            assert restarted(b) == expected[b]
        kept = data.filter(pa.array([r is None for r in verdict.quarantine_reason.to_pylist()]))
        running.remember(kept)
        write_deltalake(str(silver), kept, mode="append")
        if b:  # killed after the silver write, before the others: silver holds this batch's rows too
            assert restarted(b) == expected[b]
    assert any(any(flags) for _, flags in expected) and any(any(reasons) for reasons, _ in expected)
