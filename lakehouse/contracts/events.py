"""The change event published to Kafka: its schema (defined once, versioned) and how it is built.

Every later stage imports ENVELOPE_FIELDS from here: Spark derives its parsing schema from it and
the warehouse its columns, so the producer and its consumers cannot drift apart.

Documents travel as relaxed Extended JSON text (ObjectId -> {"$oid"}, dates -> {"$date"}), because
that is lossless for every BSON type and every consumer can parse it.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson
import orjson
from bson import ObjectId, json_util
from bson.json_util import JSONMode, JSONOptions
from bson.tz_util import utc as bson_utc

SCHEMA_VERSION = 3
# v2: `doc_id` is the _id as relaxed Extended JSON in its own key order, so it is type-exact: 1001 and
#     "1001", an ObjectId and its hex string, {a, b} and {b, a}, null and "null" are distinct documents,
#     as they are in MongoDB. v2 is release 1's envelope (lakehouse/contracts/formats.py); v1, a
#     development build's, whose doc_id was the _id as text (those collided), is quarantined.
# v3 (release 2): the Kafka key's field is `key`, not `order_id` (every collection has one, and a
#     customer's is not an order's id). v2 events are still read: their `order_id` is their key.
OLDEST_READ_VERSION = 2
# Envelope fields of older versions still read, and the field of this version each one became.
RENAMED_FIELDS: dict[str, str] = {"order_id": "key"}

# name -> type, in a small vocabulary every consumer maps: string, long, int.
ENVELOPE_FIELDS: tuple[tuple[str, str], ...] = (
    ("schema_version", "int"),
    ("change_id", "string"),  # deterministic: same change re-read after a restart -> same id
    ("op", "string"),  # insert | update | replace | delete | snapshot | snapshot_end
    ("db", "string"),
    ("collection", "string"),
    ("doc_id", "string"),  # documentKey._id as Extended JSON (type-exact); the warehouse's row identity
    ("document_key", "string"),  # documentKey as Extended JSON, in its own key order
    ("key", "string"),  # the Kafka key: the spec's key field of the document, else doc_id
    ("full_document", "string"),  # post-image (updateLookup) as Extended JSON; null for delete
    ("before_document", "string"),  # pre-image when the collection records them
    ("update_description", "string"),  # updatedFields / removedFields as Extended JSON
    ("cluster_time_s", "long"),  # source order: cluster time seconds ...
    ("cluster_time_inc", "long"),  # ... its increment ...
    ("txn_op_index", "long"),  # ... and the position among events sharing that cluster time
    ("txn_number", "long"),
    ("wall_time_ms", "long"),
    ("resume_token", "string"),
    ("captured_at_ms", "long"),  # when the producer saw it (not part of change_id)
    # document_digest(full_document): lets reconcile compare MongoDB's raw BSON without decoding it.
    # Optional: events without it (and documents it cannot speak for) are compared in full.
    ("document_digest", "string"),
)
ENVELOPE_FIELD_NAMES: tuple[str, ...] = tuple(name for name, _ in ENVELOPE_FIELDS)
REQUIRED_FIELDS: tuple[str, ...] = ("change_id", "op", "db", "collection", "doc_id", "cluster_time_s")
STREAMED_OPERATIONS = ("insert", "update", "replace", "delete")  # read from the change stream
OPERATIONS = (*STREAMED_OPERATIONS, "snapshot", "snapshot_end")
DOCUMENT_OPERATIONS = ("insert", "update", "replace", "snapshot")  # the changes that carry the whole document
# doc_id of a snapshot_end event, which is about a whole collection.
WHOLE_COLLECTION = "*"

_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True)
# What json_util.dumps hands to json.dumps (default separators, ASCII), built once instead of per call.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)
_IN_ORDER_JSON = json.JSONEncoder()
_AS_IS = frozenset((str, int, bool, type(None)))
_UTC = (bson_utc, datetime.UTC)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _convert(value: Any) -> Any:
    """json_util's BSON -> JSON-ready conversion (relaxed mode), with the types a change stream mostly
    carries done inline: json_util's own walk costs a hasattr chain per value and 10 us per date. Any
    other type, or an odd date (naive, not UTC, before 1970), goes to json_util itself, so the text is
    the same as json_util.dumps gives (tests/unit/test_extended_json.py holds them equal)."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dict:
        return {k: _convert(v) for k, v in value.items()}
    if kind is list:
        return [_convert(v) for v in value]
    if kind is float and math.isfinite(value):
        return value
    if kind is datetime.datetime and value.tzinfo in _UTC and value >= _EPOCH:
        text = value.isoformat(timespec="milliseconds")  # YYYY-MM-DDTHH:MM:SS.mmm+00:00
        return {"$date": f"{text[:19]}Z" if text[20:23] == "000" else f"{text[:23]}Z"}
    if kind is ObjectId:
        return {"$oid": str(value)}
    if hasattr(value, "items"):  # the rest as json_util._json_convert walks it
        return {k: _convert(v) for k, v in value.items()}
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
        return [_convert(v) for v in value]
    try:
        return json_util.default(value, _JSON)
    except TypeError:
        return value


def to_extended_json(value: Any) -> str | None:
    """Relaxed Extended JSON with sorted keys: json_util.dumps(value, sort_keys=True), faster."""
    return None if value is None else _SORTED_JSON.encode(_convert(value))


def doc_id_text(document_key: Mapping[str, Any]) -> str:
    """A document's identity: its _id as relaxed Extended JSON in the _id's own key order (type-exact:
    1001 -> 1001, "1001" -> "\"1001\"", ObjectId -> {"$oid": ...})."""
    return _IN_ORDER_JSON.encode(_convert(document_key.get("_id")))


def identity_of(value: Any) -> str:
    """The doc_id of a document whose _id is `value`, given as it appears in another document's relaxed
    Extended JSON (a reference: an order's customer_id) - the same text doc_id_text gives."""
    return _IN_ORDER_JSON.encode(value)


def key_json(document_key: Mapping[str, Any]) -> str:
    """documentKey as Extended JSON, in its own key order (part of the identity for a document _id)."""
    return _IN_ORDER_JSON.encode(_convert(document_key))


def canonical_document(document: Mapping[str, Any] | str) -> str:
    """One spelling of a document, for hashing on both sides of reconciliation."""
    data = json.loads(document) if isinstance(document, str) else json.loads(to_extended_json(document))
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


DIGEST_BYTES = 12  # each half of a document digest: 96 bits, short enough for DuckDB to keep inline
DIGEST_CHARS = 2 * DIGEST_BYTES  # ... as hex


def raw_digest(raw: bytes | memoryview) -> bytes:
    """The digest of a document's BSON bytes, as find() returns them (reconcile's side)."""
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


def text_digest(text: str | None) -> str:
    """The digest of a document's Extended JSON text (hex): it binds a document_digest to its text."""
    return hashlib.sha256((text or "").encode()).hexdigest()[:DIGEST_CHARS]


def document_digest(document: Mapping[str, Any] | None, text: str | None) -> str | None:
    """raw_digest of the document's BSON (hex), then text_digest of `text` (its Extended JSON as published).

    The BSON is the decoded document encoded again, which gives MongoDB's own bytes for every type a
    decode keeps (all but deprecated ones such as undefined and symbol) in the document's own key order.
    Reconcile hashes find()'s raw bytes and compares them with the first half without decoding a
    document; the warehouse trusts that half only while its stored document still has the second half's
    digest, so a document changed anywhere after capture is compared in full, never taken as equal.
    None (compared in full) for no document, or one that does not encode."""
    if document is None:
        return None
    try:
        encoded = bson.encode(document)
    except (bson.errors.InvalidDocument, TypeError, ValueError, OverflowError):
        return None
    return raw_digest(encoded).hex() + text_digest(text)


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SourcePosition:
    """Where an event sits in the source's order; persisted with the resume token."""

    cluster_time_s: int
    cluster_time_inc: int
    txn_op_index: int

    def next_for(self, seconds: int, inc: int) -> SourcePosition:
        same = (seconds, inc) == (self.cluster_time_s, self.cluster_time_inc)
        return SourcePosition(seconds, inc, self.txn_op_index + 1 if same else 0)


def key_of(*documents: Mapping[str, Any] | None, key_field: str = "_id") -> str | None:
    """The Kafka key's text: the first document's `key_field` (a dotted path for a nested one), or None
    (the caller keys by doc_id) when the field is _id or no document has it."""
    if key_field == "_id":
        return None
    for document in documents:
        value: Any = document
        for step in key_field.split("."):
            value = value.get(step) if isinstance(value, Mapping) else None
        if value is not None:
            return str(value)
    return None


def from_change(change: Mapping[str, Any], position: SourcePosition, key_field: str = "_id") -> dict[str, Any]:
    """Envelope for one change-stream event; `position` orders it among same-time events; the Kafka key
    (envelope field `key`) is the document's `key_field` (collections.toml), else its doc_id."""
    ns = change["ns"]
    token = change["_id"]["_data"]
    document_key = change.get("documentKey") or {}
    before = change.get("fullDocumentBeforeChange")
    full = post_image(change)
    doc_id = doc_id_text(document_key)
    wall = change.get("wallTime")
    full_json = to_extended_json(full)
    return {
        "schema_version": SCHEMA_VERSION,
        "change_id": _sha(f"{ns['db']}.{ns['coll']}", token),
        "op": change["operationType"],
        "db": ns["db"],
        "collection": ns["coll"],
        "doc_id": doc_id,
        "document_key": key_json(document_key),
        "key": key_of(full, before, key_field=key_field) or doc_id,
        "full_document": full_json,
        "before_document": to_extended_json(before),
        "update_description": to_extended_json(change.get("updateDescription")),
        "cluster_time_s": position.cluster_time_s,
        "cluster_time_inc": position.cluster_time_inc,
        "txn_op_index": position.txn_op_index,
        "txn_number": change.get("txnNumber"),
        "wall_time_ms": int(wall.timestamp() * 1000) if wall is not None else None,
        "resume_token": token,
        "captured_at_ms": int(time.time() * 1000),
        "document_digest": document_digest(full if isinstance(full, Mapping) else None, full_json),
    }


def post_image(change: Mapping[str, Any]) -> Any:
    """The document as this change left it. An update's fullDocument is looked up when the event is read
    (updateLookup), so after quick successive updates it shows a later state (and none once the document
    is gone); where the server gives the pre-image, the change's own result is the pre-image with its
    updateDescription applied. Falls back to the looked-up document when the description cannot be
    applied (a path through a value that is not a document or an array)."""
    full = change.get("fullDocument")
    before = change.get("fullDocumentBeforeChange")
    description = change.get("updateDescription")
    if change.get("operationType") != "update" or not isinstance(before, Mapping) or not isinstance(description,
                                                                                                    Mapping):
        return full
    try:
        return apply_update_description(before, description)
    except (KeyError, IndexError, TypeError, ValueError):
        return full


def apply_update_description(before: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """A pre-image with a change stream's updateDescription applied (removedFields, truncatedArrays,
    updatedFields, in MongoDB's order of application)."""
    document = copy.deepcopy(dict(before))
    for path in description.get("removedFields") or ():
        parent, last = _walk(document, path, create=False)
        if parent is not None:
            if isinstance(parent, list):
                raise ValueError(f"removed array element {path}")
            parent.pop(last, None)
    for truncated in description.get("truncatedArrays") or ():
        parent, last = _walk(document, truncated["field"], create=False)
        array = parent[int(last)] if isinstance(parent, list) else parent[last]
        del array[int(truncated["newSize"]):]
    for path, value in (description.get("updatedFields") or {}).items():
        parent, last = _walk(document, path, create=True)
        if isinstance(parent, list):
            index = int(last)
            parent.extend([None] * (index + 1 - len(parent)))
            parent[index] = copy.deepcopy(value)
        else:
            parent[last] = copy.deepcopy(value)
    return document


def _walk(document: dict[str, Any], path: str, create: bool) -> tuple[Any, str]:
    """The container holding the path's last step (None when it is absent and not to be created)."""
    steps = path.split(".")
    node: Any = document
    for step in steps[:-1]:
        if isinstance(node, list):
            node = node[int(step)]
        elif isinstance(node, dict):
            if step not in node:
                if not create:
                    return None, steps[-1]
                node[step] = {}
            node = node[step]
        else:
            raise TypeError(f"{path}: {step} is not a document or an array")
    if not isinstance(node, (dict, list)):
        raise TypeError(f"{path}: not a document or an array")
    return node, steps[-1]


def from_snapshot(
    db: str, collection: str, document: Mapping[str, Any], cluster_time: tuple[int, int], key_field: str = "_id"
) -> dict[str, Any]:
    """Envelope for a copied document. It sorts before any streamed change at the same time
    (txn_op_index -1); copying the same content in the same snapshot again gives the same change_id."""
    document_key = {"_id": document["_id"]}
    doc_id = doc_id_text(document_key)
    full = to_extended_json(document)
    return {
        "schema_version": SCHEMA_VERSION,
        "change_id": _sha("snapshot", f"{db}.{collection}", f"{cluster_time[0]}.{cluster_time[1]}", doc_id,
                          canonical_document(full or "{}")),
        "op": "snapshot",
        "db": db,
        "collection": collection,
        "doc_id": doc_id,
        "document_key": key_json(document_key),
        "key": key_of(document, key_field=key_field) or doc_id,
        "full_document": full,
        "before_document": None,
        "update_description": None,
        "cluster_time_s": cluster_time[0],
        "cluster_time_inc": cluster_time[1],
        "txn_op_index": -1,
        "txn_number": None,
        "wall_time_ms": None,
        "resume_token": None,
        "captured_at_ms": int(time.time() * 1000),
        "document_digest": document_digest(document, full),
    }


def snapshot_end(db: str, collection: str, cluster_time: tuple[int, int]) -> dict[str, Any]:
    """Marks a complete copy of `collection` as of `cluster_time`: a document whose latest change is
    older than this no longer exists (it was deleted while the change history was unavailable)."""
    return {
        **{name: None for name in ENVELOPE_FIELD_NAMES},
        "schema_version": SCHEMA_VERSION,
        "change_id": _sha("snapshot_end", f"{db}.{collection}", f"{cluster_time[0]}.{cluster_time[1]}"),
        "op": "snapshot_end",
        "db": db,
        "collection": collection,
        "doc_id": WHOLE_COLLECTION,
        "key": WHOLE_COLLECTION,
        "cluster_time_s": cluster_time[0],
        "cluster_time_inc": cluster_time[1],
        "txn_op_index": -1,
        "captured_at_ms": int(time.time() * 1000),
    }


def collection_ended(db: str, collection: str, cluster_time: tuple[int, int], token: str,
                     operation: str) -> dict[str, Any]:
    """A captured collection dropped, renamed away or its database dropped at `cluster_time`: as a
    snapshot_end with nothing copied before it, every document whose latest change is older ends."""
    return {
        **snapshot_end(db, collection, cluster_time),
        "change_id": _sha(f"{db}.{collection}", token, operation),
        "resume_token": token,
    }


def repair_tombstone(db: str, collection: str, doc_id: str, document_key: str | None, key: str | None,
                     cluster_time: tuple[int, int]) -> dict[str, Any]:
    """A delete published by `reconcile --repair` for a document the warehouse has and MongoDB no longer
    has, as of `cluster_time` (a later re-insert has a later cluster time and wins)."""
    return {
        **{name: None for name in ENVELOPE_FIELD_NAMES},
        "schema_version": SCHEMA_VERSION,
        "change_id": _sha("repair-delete", f"{db}.{collection}", f"{cluster_time[0]}.{cluster_time[1]}", doc_id),
        "op": "delete",
        "db": db,
        "collection": collection,
        "doc_id": doc_id,
        "document_key": document_key,
        "key": key or doc_id,
        "cluster_time_s": cluster_time[0],
        "cluster_time_inc": cluster_time[1],
        "txn_op_index": -1,
        "captured_at_ms": int(time.time() * 1000),
    }


def encode(envelope: Mapping[str, Any]) -> bytes:
    """The event's bytes: compact UTF-8 JSON, as json.dumps(separators=(",", ":"), ensure_ascii=False)
    writes it (orjson writes the same bytes for an envelope's str/int/None values, 8x faster; what it
    refuses, json gets, so an odd value fails or passes exactly as before)."""
    try:
        return orjson.dumps(envelope)
    except TypeError:
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


# A key longer than this is replaced by a hash of it (the original stays in the event's `key`), so
# one document's changes still share a partition and the record still fits.
MAX_KEY_BYTES = 1024


def bounded_key(key: str) -> bytes:
    """A Kafka key: the text itself, or for a huge one a hash of it (same key -> same partition)."""
    raw = key.encode()
    return raw if len(raw) <= MAX_KEY_BYTES else b"sha256:" + hashlib.sha256(raw).hexdigest().encode()


def kafka_key(envelope: Mapping[str, Any]) -> bytes:
    """The Kafka key of an event: its `key` (the document's identity when it has none), bounded."""
    return bounded_key(str(envelope["key"]))
