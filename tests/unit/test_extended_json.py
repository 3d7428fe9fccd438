"""The producer's own Extended JSON and envelope encoders write exactly the bytes json_util and json.dumps
write: a change re-read after an upgrade must give the same event, and consumers parse what they always did."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp, json_util
from bson.datetime_ms import DatetimeMS
from bson.son import SON
from bson.tz_util import FixedOffset, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from lakehouse.contracts import events

RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)

dates = st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31),
                     timezones=st.sampled_from([utc, datetime.UTC, FixedOffset(0, "zero"), FixedOffset(-90, "x")])
                     | st.none())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(), dates, st.builds(ObjectId, st.binary(min_size=12, max_size=12)),
    st.builds(Int64, st.integers(-(2**63), 2**63 - 1)),
    st.integers(-(10**30), 10**30).map(lambda i: Decimal128(f"{i}E-4")),
    st.builds(Binary, st.binary(max_size=8), st.sampled_from([0, 4, 5, 128])), st.binary(max_size=8),
    st.builds(Timestamp, st.integers(0, 2**31), st.integers(0, 2**31)), st.builds(Code, st.text(max_size=5)),
    st.builds(Regex, st.text(max_size=5), st.sampled_from(["", "i", "ms"])), st.just(re.compile("a.b", re.I)),
    st.just(MinKey()), st.just(MaxKey()), st.builds(uuid.UUID, st.uuids().map(str)),
    st.builds(DatetimeMS, st.integers(-(2**62), 2**62)), st.builds(DBRef, st.text(max_size=4), st.integers()),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4),
    st.lists(st.tuples(st.text(max_size=6), inner), max_size=4).map(SON),
), max_leaves=20)


def _library(value: Any, **kwargs: Any) -> str:
    return json_util.dumps(value, json_options=RELAXED, **kwargs)


def _same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs) and ours == theirs


@settings(max_examples=400, deadline=None)
@given(values)
def test_extended_json_is_json_utils_text(value: Any) -> None:
    document = {"_id": value, "v": value}
    for ours, theirs in ((lambda: events.to_extended_json(document), lambda: _library(document, sort_keys=True)),
                         (lambda: events.doc_id_text(document), lambda: _library(value)),
                         (lambda: events.key_json(document), lambda: _library(document))):
        try:
            expected: Any = theirs()
        except Exception as exc:  # noqa: BLE001 - whatever json_util raises, ours raises the same way
            expected = type(exc)
        try:
            got: Any = ours()
        except Exception as exc:  # noqa: BLE001
            got = type(exc)
        _same(got, expected)


def test_the_usual_order_document_is_json_utils_text() -> None:
    order = {"_id": ObjectId(), "order_id": "ord-1", "amount": "1.423,44 EUR", "total": Decimal128("12.30"),
             "items": [{"sku": "sku-1", "qty": 4, "price": 2.5}], "created_at": datetime.datetime.now(utc),
             "at_ms": datetime.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=utc), "old": datetime.datetime(1969, 12, 31)}
    assert events.to_extended_json(order) == json_util.dumps(order, json_options=RELAXED, sort_keys=True)


envelope_values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(),
                            st.builds(Int64, st.integers(0, 99)))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(), envelope_values, max_size=6))
def test_an_envelope_encodes_to_json_dumps_bytes(envelope: dict[str, Any]) -> None:
    try:
        expected: Any = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it, whichever encoder
        expected = type(exc)
    try:
        got: Any = events.encode(envelope)
    except UnicodeEncodeError as exc:
        got = type(exc)
    assert got == expected


def test_control_characters_and_line_separators_are_escaped_as_json_does() -> None:
    text = "".join(chr(c) for c in range(0x80)) + "\u2028\u2029\u00e9\U0001f600"
    envelope = {"order_id": text, "n": 2**63 - 1, "none": None}
    assert events.encode(envelope) == json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
