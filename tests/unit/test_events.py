from datetime import UTC, datetime

from bson import ObjectId, Timestamp

from lakehouse.contracts import events
from lakehouse.contracts.events import ENVELOPE_FIELD_NAMES, SourcePosition


def change(op: str = "update", token: str = "82ABC", full: dict | None = None, before: dict | None = None) -> dict:
    oid = ObjectId("6b038060dfb53f1723db4377")
    return {
        "_id": {"_data": token},
        "operationType": op,
        "clusterTime": Timestamp(1795391584, 7),
        "wallTime": datetime(2026, 11, 22, 23, 53, 4, tzinfo=UTC),
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": oid},
        "fullDocument": full,
        "fullDocumentBeforeChange": before,
        "updateDescription": {"updatedFields": {"status": "paid"}, "removedFields": []},
    }


POS = SourcePosition(1795391584, 7, 0)


def test_envelope_has_exactly_the_schema_fields() -> None:
    envelope = events.from_change(change(full={"order_id": "o1"}), POS)
    assert tuple(envelope) == ENVELOPE_FIELD_NAMES
    assert envelope["schema_version"] == events.SCHEMA_VERSION


def test_change_id_is_deterministic_and_ignores_capture_time() -> None:
    a = events.from_change(change(full={"order_id": "o1"}), POS)
    b = events.from_change(change(full={"order_id": "o1"}), POS)
    assert a["change_id"] == b["change_id"]
    assert events.from_change(change(token="82ABD"), POS)["change_id"] != a["change_id"]


def test_delete_is_keyed_by_pre_image_key_field_and_falls_back_to_doc_id() -> None:
    with_pre_image = events.from_change(change("delete", before={"order_id": "o9"}), POS, key_field="order_id")
    assert with_pre_image["key"] == "o9"
    assert with_pre_image["full_document"] is None
    without = events.from_change(change("delete"), POS, key_field="order_id")
    assert without["key"] == without["doc_id"] == '{"$oid": "6b038060dfb53f1723db4377"}'
    keyed_by_id = events.from_change(change("delete", before={"order_id": "o9"}), POS)
    assert keyed_by_id["key"] == keyed_by_id["doc_id"]


def test_documents_travel_as_extended_json() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    envelope = events.from_change(change(full={"_id": ObjectId("6b038060dfb53f1723db4377"), "at": when}), POS)
    assert '"$oid": "6b038060dfb53f1723db4377"' in envelope["full_document"]
    assert '"$date"' in envelope["full_document"]


def test_snapshot_id_depends_on_content_and_snapshot_and_sorts_before_streamed_changes() -> None:
    doc = {"_id": 1, "order_id": "o1", "status": "paid"}
    a = events.from_snapshot("shop", "orders", doc, (10, 1))
    again = events.from_snapshot("shop", "orders", dict(reversed(list(doc.items()))), (10, 1))
    changed = events.from_snapshot("shop", "orders", {**doc, "status": "shipped"}, (10, 1))
    later_snapshot = events.from_snapshot("shop", "orders", doc, (20, 5))
    assert a["change_id"] == again["change_id"]  # a retried batch of one snapshot repeats its ids
    assert a["change_id"] != changed["change_id"]
    assert a["change_id"] != later_snapshot["change_id"]  # a re-snapshot re-confirms the document
    assert a["txn_op_index"] == -1 and a["op"] == "snapshot"


def test_snapshot_end_marks_the_whole_collection() -> None:
    end = events.snapshot_end("shop", "orders", (10, 1))
    assert tuple(end) == events.ENVELOPE_FIELD_NAMES
    assert end["doc_id"] == events.WHOLE_COLLECTION and end["op"] == "snapshot_end"
    assert all(end[f] is not None for f in events.REQUIRED_FIELDS)


def test_source_position_counts_events_sharing_a_cluster_time() -> None:
    p = SourcePosition(5, 1, 0)
    assert p.next_for(5, 1) == SourcePosition(5, 1, 1)
    assert p.next_for(5, 1).next_for(5, 2) == SourcePosition(5, 2, 0)


def test_canonical_document_is_key_order_independent() -> None:
    assert events.canonical_document('{"b": 1, "a": [1, 2]}') == events.canonical_document({"a": [1, 2], "b": 1})


def test_identity_is_type_exact() -> None:
    from bson import ObjectId
    from bson.son import SON

    oid = ObjectId("6b038060dfb53f1723db4377")
    ids = [1001, "1001", oid, str(oid), SON([("a", 1), ("b", 2)]), SON([("b", 2), ("a", 1)]), '{"a": 1, "b": 2}',
           None, "null", "*"]
    identities = [events.doc_id_text({"_id": value}) for value in ids]
    assert len(set(identities)) == len(ids), identities
    assert events.WHOLE_COLLECTION not in identities


def test_an_update_description_applies_to_the_pre_image() -> None:
    from lakehouse.contracts.events import apply_update_description, post_image

    before = {"_id": 1, "a": {"b": 1, "c": 2}, "items": [{"q": 1}, {"q": 2}, {"q": 3}], "gone": True}
    description = {"removedFields": ["gone", "a.c"], "truncatedArrays": [{"field": "items", "newSize": 2}],
                   "updatedFields": {"a.b": 5, "items.1.q": 9, "items.3": "pad", "new.deep": [1]}}
    assert apply_update_description(before, description) == {
        "_id": 1, "a": {"b": 5}, "items": [{"q": 1}, {"q": 9}, None, "pad"], "new": {"deep": [1]}}
    assert before["items"][1] == {"q": 2}  # the pre-image is left as it was
    looked_up = {"_id": 1, "later": True}
    change = {"operationType": "update", "fullDocument": looked_up, "fullDocumentBeforeChange": before,
              "updateDescription": {"updatedFields": {"gone.x": 1}}}  # through a bool: cannot apply
    assert post_image(change) is looked_up
    assert post_image({**change, "fullDocumentBeforeChange": None}) is looked_up  # no pre-image: the lookup
    assert post_image({**change, "operationType": "replace"}) is looked_up
