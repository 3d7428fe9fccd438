"""Reconcile compares MongoDB's raw BSON with a digest the producer made at capture, without decoding
documents: the identity read from the bytes is the one the pipeline gives, the digest of a decoded and
re-encoded document is the digest of MongoDB's bytes, and a digest never speaks for a warehouse row whose
document changed after capture (it is compared in full instead)."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pyarrow as pa
import pytest
from bson import DBRef, ObjectId
from bson.codec_options import CodecOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from lakehouse.adapters.mongo import raw_batches_ahead, raw_doc_id, raw_documents
from lakehouse.contracts import events
from lakehouse.core.config import Settings
from tests.unit.test_extended_json import values
from warehouse.connection import open_warehouse
from warehouse.reconcile import compare

# How the pipeline's MongoDB client decodes (lakehouse/adapters/mongo.connect).
DECODING = CodecOptions(tz_aware=True, datetime_conversion=bson.DatetimeConversion.DATETIME_AUTO)


def _encoded(document: dict[str, Any]) -> bytes | None:
    try:
        return bson.encode(document)
    except (bson.errors.InvalidDocument, TypeError, ValueError, OverflowError):
        return None  # not a BSON document (a UUID without a representation, an int past 64 bits, ...)


@settings(max_examples=400, deadline=None)
@given(values)
def test_the_identity_read_from_raw_bytes_is_the_pipelines(value: Any) -> None:
    raw = _encoded({"_id": value, "x": 1})
    if raw is None:
        return
    try:
        expected: Any = events.doc_id_text(bson.decode(raw, DECODING))
    except Exception as exc:  # noqa: BLE001 - whatever the decode raises, ours raises the same way
        expected = type(exc)
    try:
        got: Any = raw_doc_id(memoryview(raw), DECODING)
    except Exception as exc:  # noqa: BLE001
        got = type(exc)
    assert got == expected


def test_an_id_that_is_not_first_is_found_too() -> None:
    raw = bson.encode({"x": 1, "_id": "later"}) + bson.encode({"_id": ObjectId("0" * 24)})
    assert [raw_doc_id(d, DECODING) for d in raw_documents(raw)] == ['"later"', '{"$oid": "' + "0" * 24 + '"}']


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6).filter(lambda k: "\x00" not in k), values, max_size=5))
def test_a_decoded_documents_digest_is_the_digest_of_mongodbs_bytes(fields: dict[str, Any]) -> None:
    raw = _encoded({"_id": 1, **fields})
    if raw is None:
        return
    try:
        document = bson.decode(raw, DECODING)
    except Exception:  # noqa: BLE001 - MongoDB would not return what does not decode
        return
    digest = events.document_digest(document, events.to_extended_json(document))
    assert digest is not None
    assert digest[:events.DIGEST_CHARS] == events.raw_digest(raw).hex(), document


def test_types_that_do_not_re_encode_byte_for_byte_are_left_to_the_full_compare() -> None:
    # A DBRef's extra fields come back after $ref/$id/$db: its digest differs from MongoDB's bytes,
    # so such a document is compared in full (slower), never taken as equal on a digest.
    raw = bson.encode({"_id": 1, "ref": {"x": 1, "$ref": "c", "$id": 2}})
    document = bson.decode(raw, DECODING)
    assert isinstance(document["ref"], DBRef)
    digest = events.document_digest(document, events.to_extended_json(document))
    assert digest is not None and digest[:events.DIGEST_CHARS] != events.raw_digest(raw).hex()
    assert events.document_digest({"_id": uuid.uuid4()}, "{}") is None  # does not encode: no digest at all
    assert events.document_digest(None, None) is None


def _warehouse(tmp_path: Path, rows: list[tuple[str, str, str | None]]) -> Settings:
    settings = Settings.from_env(warehouse_path=tmp_path / "wh.duckdb", state_dir=tmp_path / "state")
    con = open_warehouse(settings)
    con.register("rows", pa.table({"doc_id": [r[0] for r in rows], "document": [r[1] for r in rows],
                                   "document_digest": pa.array([r[2] for r in rows], pa.string())}))
    con.execute("INSERT INTO orders (doc_id, document, document_digest, last_change_id, cluster_time_s, "
                "cluster_time_inc, txn_op_index) SELECT doc_id, document, document_digest, doc_id, 0, 0, 0 FROM rows")
    con.close()
    return settings


def test_a_row_counts_as_equal_only_while_its_document_is_the_one_its_digest_was_made_with(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    documents = {n: {"_id": n, "status": "paid", "at": now} for n in range(6)}
    texts = {n: events.to_extended_json(d) for n, d in documents.items()}
    digests = {n: events.document_digest(d, texts[n]) for n, d in documents.items()}
    settings = _warehouse(tmp_path, [
        ("0", texts[0], digests[0]),  # equal
        ("1", texts[1].replace("paid", "lost"), digests[1]),  # changed after capture: the digest is not trusted
        ("2", texts[2], None),  # loaded before digests existed: compared in full
        ("3", texts[3], digests[4]),  # another document's digest: its text half does not match
        ("5", texts[5], digests[5]),  # equal in the warehouse, changed in MongoDB (below)
        ("9", '{"_id": 9}', None),  # not in MongoDB
    ])
    documents[5]["status"] = "refunded"
    mongodb = [(events.doc_id_text(d), events.raw_digest(bson.encode(d))) for n, d in documents.items() if n != 4]
    found = compare(settings, "orders", [pa.record_batch([pa.array([i for i, _ in mongodb], pa.string()),
                                                          pa.array([g for _, g in mongodb], pa.binary())],
                                                         names=["doc_id", "digest"])])
    assert (found.source, found.warehouse) == (5, 6)
    assert (sorted(found.mismatched), found.missing, found.extra) == (["1", "2", "3", "5"], [], ["9"])
    assert found.ids["1"] == '{"_id": 1}'


class _Cursor:
    def __init__(self, batches: list[bytes], fail: Exception | None) -> None:
        self.batches, self.fail, self.closed = batches, fail, threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self.batches
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        self.closed.set()


class _Collection:
    def __init__(self, cursor: _Cursor) -> None:
        self.cursor = cursor

    def find_raw_batches(self, query: dict[str, Any], batch_size: int) -> _Cursor:
        return self.cursor


def test_the_read_ahead_hands_over_every_batch_in_order_then_the_readers_error() -> None:
    cursor = _Cursor([b"a", b"b", b"c"], ConnectionError("MongoDB went away"))
    got = []
    with pytest.raises(ConnectionError, match="went away"):
        for batch in raw_batches_ahead(_Collection(cursor), {}):  # type: ignore[arg-type]
            got.append(batch)
    assert got == [b"a", b"b", b"c"] and cursor.closed.is_set()


def test_a_caller_that_stops_reading_stops_the_reader_and_closes_the_cursor() -> None:
    cursor = _Cursor([bytes([n]) for n in range(50)], None)
    reading = raw_batches_ahead(_Collection(cursor), {})  # type: ignore[arg-type]
    assert next(reading) == b"\x00"
    reading.close()
    assert cursor.closed.wait(10)
    assert not [t for t in threading.enumerate() if t.name == "find-read-ahead"]


def test_documents_by_id_are_asked_for_a_few_ids_per_query() -> None:
    """MongoDB 8.2 runs an `_id $in` in time growing with the square of its length (5,000 ids: 20 s in
    one query, 0.4 s in queries of 32), so the second look and the repairs ask in small queries."""
    from lakehouse.adapters.mongo import IDS_PER_QUERY, by_ids

    queries = by_ids(list(range(2 * IDS_PER_QUERY + 5)))
    assert [len(q["_id"]["$in"]) for q in queries] == [IDS_PER_QUERY, IDS_PER_QUERY, 5]
    assert [i for q in queries for i in q["_id"]["$in"]] == list(range(2 * IDS_PER_QUERY + 5))
    assert by_ids([]) == []
