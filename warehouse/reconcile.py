"""Is the warehouse's current state equal to MongoDB's? Per document, by a hash of its content; and
repair what is not, through the pipeline's own path.

Both sides are streamed in chunks: MongoDB's documents are hashed as they arrive (the same Extended
JSON the producer writes) into a scratch DuckDB table of (doc_id, _id, hash), the warehouse's hashes are
read in one short read-only query (the loader gets the file back at once), and DuckDB joins them. Only
identities and hashes are held, never the documents.

A repair publishes, for each missing or mismatched document, its state as read from MongoDB after the
reconcile began, as a `snapshot` event at the cluster time the reconcile began (any later change has a
later cluster time, so it still wins); and for each document MongoDB no longer has, a `delete` at that
time. They flow through Kafka, Spark and the loader like every change; the warehouse converges without
a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
from bson import json_util
from kafka.errors import KafkaError

from lakehouse import events
from lakehouse.config import Settings
from lakehouse.files import write_json_atomically
from lakehouse.mongo import connect as connect_mongo
from lakehouse.progress import Progress
from warehouse.loader import connect, require_warehouse

log = logging.getLogger(__name__)

CHUNK = 10_000


@dataclass
class Reconciliation:
    source: int
    warehouse: int
    missing: list[str] = field(default_factory=list)  # in MongoDB, not in the warehouse
    extra: list[str] = field(default_factory=list)  # in the warehouse, not in MongoDB
    mismatched: list[str] = field(default_factory=list)  # in both, different content
    collection: str = "orders"
    cluster_time: tuple[int, int] = (0, 0)  # MongoDB's cluster time when the reconcile began
    ids: dict[str, str] = field(default_factory=dict)  # doc_id -> _id as Extended JSON (missing, mismatched)
    repaired: int = 0
    # In MongoDB, not in the warehouse, because the producer dead-lettered their change (e.g. too large):
    # accounted for, not missing, and not repaired (the repair would be refused the same way).
    dead_lettered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def line(self) -> str:
        return (
            f"reconciled: source={self.source} warehouse={self.warehouse} missing={len(self.missing)} "
            f"extra={len(self.extra)} mismatched={len(self.mismatched)}"
            + (f" (dead-lettered, not loaded: {len(self.dead_lettered)})" if self.dead_lettered else "")
        )

    def examples(self, limit: int = 5) -> list[str]:
        out = []
        for label, keys in (("missing", self.missing), ("extra", self.extra), ("mismatched", self.mismatched),
                            ("dead-lettered", self.dead_lettered)):
            if keys:
                out.append(f"  {label}: {', '.join(sorted(keys)[:limit])}{' ...' if len(keys) > limit else ''}")
        return out


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


def _source_chunks(collection: Any, query: dict[str, Any] | None = None) -> Iterator[pa.RecordBatch]:
    """MongoDB's documents as (doc_id, id_json, digest) batches."""
    doc_ids: list[str] = []
    id_jsons: list[str] = []
    digests: list[str] = []
    for document in collection.find(query or {}, batch_size=CHUNK):
        key = {"_id": document["_id"]}
        doc_ids.append(events.doc_id_text(key))
        id_jsons.append(events.key_json(key))
        digests.append(_digest(events.to_extended_json(document)))
        if len(doc_ids) >= CHUNK:
            yield pa.record_batch([doc_ids, id_jsons, digests], names=["doc_id", "id_json", "digest"])
            doc_ids, id_jsons, digests = [], [], []
    if doc_ids:
        yield pa.record_batch([doc_ids, id_jsons, digests], names=["doc_id", "id_json", "digest"])


def _warehouse_side(settings: Settings, scratch: duckdb.DuckDBPyConnection, only: list[str] | None = None) -> None:
    """Copy (doc_id, digest) of the warehouse's current rows (all, or `only` those) into `scratch`, holding
    the warehouse read-only for that one query."""
    con = connect(settings.warehouse_path, read_only=True)
    try:
        if only is None:
            table = con.sql("SELECT doc_id, sha256(document) AS digest FROM orders").to_arrow_table()
        else:
            con.register("wanted", pa.table({"doc_id": pa.array(only, pa.string())}))
            table = con.sql("SELECT doc_id, sha256(document) AS digest FROM orders "
                            "WHERE doc_id IN (SELECT doc_id FROM wanted)").to_arrow_table()
    finally:
        con.close()
    scratch.register("warehouse_arrow", table)
    scratch.execute("CREATE OR REPLACE TABLE wh AS SELECT * FROM warehouse_arrow")
    scratch.unregister("warehouse_arrow")


def _compare(scratch: duckdb.DuckDBPyConnection, result: Reconciliation) -> Reconciliation:
    rows = scratch.execute(
        "SELECT coalesce(s.doc_id, w.doc_id), s.id_json, s.digest IS NULL, w.digest IS NULL "
        "FROM src s FULL OUTER JOIN wh w ON s.doc_id = w.doc_id "
        "WHERE s.digest IS DISTINCT FROM w.digest").fetchall()
    for doc_id, id_json, not_in_source, not_in_warehouse in rows:
        if not_in_source:
            result.extra.append(doc_id)
        else:
            result.ids[doc_id] = id_json
            (result.missing if not_in_warehouse else result.mismatched).append(doc_id)
    result.source = int(scratch.execute("SELECT count(*) FROM src").fetchall()[0][0])
    result.warehouse = int(scratch.execute("SELECT count(*) FROM wh").fetchall()[0][0])
    return result


def reconcile(settings: Settings, collection: str = "orders", keys: Reconciliation | None = None) -> Reconciliation:
    """Compare MongoDB's `collection` with the warehouse; with `keys` (an earlier result), only the
    documents that differed then (a second look: what is still different after the chain caught up)."""
    require_warehouse(settings.warehouse_path)  # no warehouse: say so before asking MongoDB
    client = connect_mongo(settings, "lakehouse-reconcile")
    scratch = duckdb.connect()
    try:
        db = client[settings.mongo_db]
        began = db.command("ping")["operationTime"]
        result = Reconciliation(0, 0, collection=collection, cluster_time=(began.time, began.inc))
        scratch.execute("CREATE TABLE src (doc_id VARCHAR, id_json VARCHAR, digest VARCHAR)")
        if keys is None:
            query, only = None, None
            total = db[collection].estimated_document_count()
        else:
            ids = [json_util.loads(keys.ids[k])["_id"] for k in (*keys.missing, *keys.mismatched)]
            query, only, total = {"_id": {"$in": ids}}, [*keys.missing, *keys.extra, *keys.mismatched], len(ids)
        with Progress(f"reconcile {collection}: read MongoDB", total=total, unit="documents") as progress:
            for batch in _source_chunks(db[collection], query):
                scratch.register("chunk", batch)
                scratch.execute("INSERT INTO src SELECT * FROM chunk")
                scratch.unregister("chunk")
                progress.advance(batch.num_rows)
        _warehouse_side(settings, scratch, only)
        result = _compare(scratch, result)
        if result.mismatched:
            result.mismatched = _really_different(settings, db[collection], result)
        if result.missing:
            refused = dead_lettered(settings, collection)
            result.dead_lettered = [k for k in result.missing if k in refused]
            result.missing = [k for k in result.missing if k not in refused]
        return result
    finally:
        scratch.close()
        client.close()


def dead_lettered(settings: Settings, collection: str) -> set[str]:
    """Identities of `collection`'s documents whose change the producer sent to the dead-letter topic."""
    from lakehouse.errors import ServerUnreachable
    from lakehouse.kafka_io import end_offsets, read_values

    try:
        ends = end_offsets(settings, [settings.dead_letter_topic])
    except (ServerUnreachable, KafkaError) as exc:
        log.warning("cannot read the dead-letter topic (%s): documents it holds are counted as missing", exc)
        return set()
    found: set[str] = set()
    for value in read_values(settings, ends):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(value)
            if body.get("collection") == collection and body.get("doc_id") is not None:
                found.add(body["doc_id"])
    return found


def _really_different(settings: Settings, collection: Any, result: Reconciliation) -> list[str]:
    """Of documents whose text differs, those whose content differs too (one canonical spelling each
    side), so a change in how documents are spelled is not taken for a change of content."""
    different = []
    for start in range(0, len(result.mismatched), CHUNK):
        chunk = result.mismatched[start:start + CHUNK]
        ids = [json_util.loads(result.ids[k])["_id"] for k in chunk]
        source = {events.doc_id_text({"_id": d["_id"]}): events.canonical_document(d)
                  for d in collection.find({"_id": {"$in": ids}})}
        con = connect(settings.warehouse_path, read_only=True)
        try:
            con.register("wanted", pa.table({"doc_id": pa.array(chunk, pa.string())}))
            warehouse = dict(con.execute("SELECT doc_id, document FROM orders WHERE doc_id IN "
                                         "(SELECT doc_id FROM wanted)").fetchall())
        finally:
            con.close()
        different += [k for k in chunk if k not in source or k not in warehouse
                      or events.canonical_document(warehouse[k]) != source[k]]
    return different


def confirmed(settings: Settings, first: Reconciliation, settle: float, meanwhile: Callable[[], object],
              wait: Callable[[float], object] = time.sleep, catch_up_limit: float = 300.0) -> Reconciliation:
    """The differences of `first` that are still there once the chain has caught up: after `settle`
    seconds (the producer publishes what was in flight), the streaming job has committed everything
    Kafka held then (at most `catch_up_limit` more seconds) and `meanwhile` (a load) has run. Changes
    in flight when `first` looked are then no longer differences."""
    if first.ok:
        return first
    from lakehouse.kafka_io import end_offsets
    from lakehouse.positions import committed_offsets

    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        meanwhile()
        wait(min(1.0, max(0.0, deadline - time.monotonic())))
    deadline = time.monotonic() + catch_up_limit
    target: dict[str, int] | None = None
    while target is None:
        try:
            target = {f"{t}:{p}": o
                      for (t, p), o in end_offsets(settings, [settings.topic_for(first.collection)]).items()}
        except Exception as exc:  # noqa: BLE001 - Kafka away for a moment (a restart): ask again
            if time.monotonic() > deadline:
                log.warning("cannot read Kafka's end offsets (%s); looking again without waiting for the "
                            "streaming job", exc)
                target = {}
            else:
                meanwhile()
                wait(2.0)
    while time.monotonic() < deadline:
        committed = committed_offsets(settings.spark_checkpoint)
        if all(committed.get(k, 0) >= o for k, o in target.items()):
            break
        meanwhile()
        wait(1.0)
    else:
        log.warning("the streaming job did not catch up with Kafka within %.0fs; looking again anyway",
                    catch_up_limit)
    meanwhile()
    second = reconcile(settings, first.collection, keys=first)
    second.source, second.warehouse = first.source, first.warehouse
    return second


def repair(settings: Settings, result: Reconciliation, say: Callable[[str], None] = log.info) -> int:
    """Publish repair events for every difference in `result`; returns how many documents it repaired."""
    if result.ok:
        return 0
    from lakehouse.kafka_io import idempotent_producer
    from producer.listener import bounded_key

    client = connect_mongo(settings, "lakehouse-repair")
    producer = idempotent_producer(settings)
    topic = settings.topic_for(result.collection)
    at = result.cluster_time
    sent = 0
    try:
        collection = client[settings.mongo_db][result.collection]
        wanted = [json_util.loads(result.ids[k])["_id"] for k in (*result.missing, *result.mismatched)]
        futures = []
        for start in range(0, len(wanted), CHUNK):
            for document in collection.find({"_id": {"$in": wanted[start:start + CHUNK]}}):
                envelope = events.from_snapshot(settings.mongo_db, result.collection, document, at)
                futures.append(producer.send(topic, key=bounded_key(str(envelope["order_id"])),
                                             value=events.encode(envelope)))
        for doc_id, document_key, order_id in _warehouse_keys(settings, result.extra):
            envelope = events.repair_tombstone(settings.mongo_db, result.collection, doc_id, document_key, order_id,
                                               at)
            futures.append(producer.send(topic, key=bounded_key(str(envelope["order_id"])),
                                         value=events.encode(envelope)))
        producer.flush(timeout=120)
        for future in futures:
            future.get(timeout=0)
        sent = len(futures)
    finally:
        producer.close(timeout=10)
        client.close()
    result.repaired = sent
    say(f"repair: published {sent} repair events to {topic} ({len(result.missing)} missing, {len(result.mismatched)} "
        f"mismatched from MongoDB as of cluster time {at[0]}.{at[1]}, {len(result.extra)} deleted); the warehouse "
        "has them once the streaming job and the loader have caught up")
    return sent


def _warehouse_keys(settings: Settings, doc_ids: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(doc_id, documentKey as Extended JSON, order_id) of warehouse rows, for their tombstones."""
    if not doc_ids:
        return []
    con = connect(settings.warehouse_path, read_only=True)
    try:
        con.register("wanted", pa.table({"doc_id": pa.array(doc_ids, pa.string())}))
        rows = con.execute("SELECT doc_id, document, order_id FROM orders WHERE doc_id IN (SELECT doc_id FROM wanted)"
                           ).fetchall()
    finally:
        con.close()
    keys = []
    for doc_id, document, order_id in rows:
        try:
            key = json.dumps({"_id": json.loads(document)["_id"]}, sort_keys=True)
        except (TypeError, ValueError, KeyError):
            key = None
        keys.append((doc_id, key, order_id))
    return keys


def record(settings: Settings, result: Reconciliation, confirmed_after: float | None = None) -> None:
    """The last reconcile's outcome, for `status` and the metrics."""
    write_json_atomically(settings.reconcile_state, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "collection": result.collection,
        "source": result.source, "warehouse": result.warehouse, "missing": len(result.missing),
        "extra": len(result.extra), "mismatched": len(result.mismatched), "repaired": result.repaired,
        "confirmed_after_s": confirmed_after, "examples": result.examples(),
    })


def round_of(settings: Settings, do_repair: bool, settle: float, meanwhile: Callable[[], object],
             wait: Callable[[float], object] = time.sleep, say: Callable[[str], None] = log.info) -> Reconciliation:
    """One periodic reconcile (the loader service, `run-all --follow`): look, look again after `settle`
    seconds of loading at what differed, repair what is still different (or only report it), record."""
    result = confirmed(settings, reconcile(settings), settle, meanwhile, wait)
    if do_repair:
        repair(settings, result, say)
    record(settings, result, settle)
    say(f"{result.line()}{f' repaired={result.repaired}' if do_repair else ''} (differences confirmed after "
        f"{settle:g}s)")
    return result
