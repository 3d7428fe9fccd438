"""The warehouse applies changes in source order whatever order, or how often, they arrive."""

import json
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lake_fakes import append_silver, lake_settings, silver_row
from warehouse.connection import connect
from warehouse.loader import load


def history(ops: list[tuple[int, int]]) -> list[dict]:
    """A valid source history: per document insert, then updates, possibly a delete and re-insert."""
    rows, alive = [], set()
    for seq, (doc, choice) in enumerate(ops):
        if doc not in alive:
            rows.append(silver_row(seq, doc, "insert", "created"))
            alive.add(doc)
        elif choice == 0:
            rows.append(silver_row(seq, doc, "delete", None))
            alive.discard(doc)
        else:
            rows.append(silver_row(seq, doc, "update", f"s{seq}"))
    return rows


def expected_state(rows: list[dict]) -> dict[str, str]:
    state: dict[str, str] = {}
    for row in rows:
        if row["op"] == "delete":
            state.pop(row["doc_id"], None)
        else:
            state[row["doc_id"]] = row["full_document"]
    return state


def load_in_batches(tmp: Path, batches: list[list[dict]]) -> dict[str, str]:
    settings = lake_settings(tmp)
    for batch in batches:
        if batch:
            append_silver(settings, batch)
            load(settings)
    load(settings)  # a second load with nothing new changes nothing
    con = connect(settings.warehouse_path, read_only=True)
    try:  # no primary keys (schema v5): the apply itself keeps change_id and doc_id unique
        for key, table in (("change_id", "fact_order_changes"), ("doc_id", "orders")):
            assert con.execute(f"SELECT count(*) = count(DISTINCT {key}) FROM {table}").fetchall() == [(True,)]
        return dict(con.execute("SELECT doc_id, document FROM orders").fetchall())
    finally:
        con.close()


ops = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, seed=st.integers(0, 2**16))
def test_shuffled_duplicated_delivery_equals_in_order_apply(tmp_path_factory, ops, seed) -> None:
    rows = history(ops)
    rng = random.Random(seed)
    delivered = rows + rng.sample(rows, k=len(rows) // 3)  # duplicates
    rng.shuffle(delivered)
    cuts = sorted(rng.sample(range(len(delivered) + 1), k=min(3, len(delivered) + 1)))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    assert load_in_batches(tmp_path_factory.mktemp("wh"), batches) == expected_state(rows)


def test_loading_the_same_changes_twice_changes_nothing(tmp_path: Path) -> None:
    rows = history([(1, 1), (1, 1), (2, 1), (1, 0)])
    state = load_in_batches(tmp_path, [rows, rows])
    assert state == expected_state(rows) == {"2": rows[2]["full_document"]}


def test_a_complete_snapshot_removes_documents_deleted_while_history_was_lost(tmp_path: Path) -> None:
    rows = history([(1, 1), (2, 1), (3, 1)])  # docs 1, 2, 3 inserted at t=1000
    resnapshot = [silver_row(30, doc, "insert", "again") | {"op": "snapshot", "change_id": f"s{doc}"}
                  for doc in (1, 3)]  # doc 2 was deleted while the stream could not see it
    end = silver_row(31, 0, "snapshot_end", None) | {"doc_id": "*", "change_id": "end", "full_document": None,
                                                     "cluster_time_s": 1010, "cluster_time_inc": 0}
    for row in resnapshot:
        row["cluster_time_s"], row["cluster_time_inc"], row["txn_op_index"] = 1010, 0, -1
    later = silver_row(40, 3, "update", "after")  # a change after the snapshot wins over its copy
    state = load_in_batches(tmp_path, [rows, [end, later], resnapshot])
    assert set(state) == {"1", "3"}
    assert json.loads(state["3"])["status"] == "after"
