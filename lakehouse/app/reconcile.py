"""Is the warehouse's current state equal to MongoDB's? Per document, by a hash of its content; and
repair what is not, through the pipeline's own path.

MongoDB's documents are hashed as they arrive, as raw BSON (never decoded but for the _id), and streamed
to the warehouse's side of the comparison (warehouse/reconcile.py), which joins them with the digest
the producer made of each document it published (events.document_digest). Only identities and hashes
are held, never the documents. A document whose digests differ is compared in full, one canonical
spelling each side, before it counts: a digest that cannot speak for a row (loaded before digests
existed, a type that does not re-encode byte for byte, a document changed after capture) costs time,
never a false difference or a missed one.

A difference is counted, and repaired, only where the warehouse is really wrong. A periodic round
(`confirmed`) takes a cut after its first look: MongoDB's cluster time then. It waits until the whole chain
has passed the cut (the producer has read the change stream past it, Kafka acknowledged that, the
streaming job committed those offsets, and a load ran), then looks again at what differed. A document
still different whose MongoDB state did not change between the two looks was in the same state at the
cut, which the warehouse must then hold: that is a difference. One that changed in between has a newer
change on its way: it is "in flight" and counts next round if it is still wrong then. A chain that does
not pass the cut in time defers the round: nothing is counted or repaired.

A repair publishes, for each missing or mismatched document, its state as read from MongoDB after the
reconcile began, as a `snapshot` event at the cluster time the reconcile began (any later change has a
later cluster time, so it still wins); and for each document MongoDB no longer has, a `delete` at that
time. They flow through Kafka, Spark and the loader like every change; the warehouse converges without
a rebuild.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bson import json_util

from lakehouse.adapters.delta import LakeTable
from lakehouse.adapters.kafka import KafkaTransient, end_offsets, publisher, read_values
from lakehouse.adapters.mongo import cluster_time, find_by_ids, raw_batches_ahead, raw_doc_id, raw_documents
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts import events, tables
from lakehouse.contracts.positions import committed_offsets, split_key
from lakehouse.core.config import Settings
from lakehouse.core.errors import ServerUnreachable
from lakehouse.core.files import write_json_atomically
from lakehouse.core.progress import Progress
from lakehouse.core.rules import QUALITY_REASON
from producer.checkpoint import CheckpointUnreadable, FileCheckpointStore
from warehouse import metrics as warehouse_metrics
from warehouse.connection import require_warehouse
from warehouse.lake import require_matching_lake
from warehouse.reconcile import SOURCE_COLUMNS, compare, current_documents, current_keys, current_rows

log = logging.getLogger(__name__)

CHUNK = 10_000
REPAIRS_NAMED = 1_000  # documents a repair names in its log line
ALL = "all"  # the collection of a result that sums several


@dataclass
class Reconciliation:
    source: int
    warehouse: int
    missing: list[str] = field(default_factory=list)  # in MongoDB, not in the warehouse
    extra: list[str] = field(default_factory=list)  # in the warehouse, not in MongoDB
    mismatched: list[str] = field(default_factory=list)  # in both, different content
    collection: str = field(kw_only=True)
    cluster_time: tuple[int, int] = (0, 0)  # MongoDB's cluster time when the reconcile began
    ids: dict[str, str] = field(default_factory=dict)  # doc_id -> _id as Extended JSON (missing, mismatched)
    repaired: int = 0
    # In MongoDB, not in the warehouse, because the producer dead-lettered their change (e.g. too large):
    # accounted for, not missing, and not repaired (the repair would be refused the same way).
    dead_lettered: list[str] = field(default_factory=list)
    # In MongoDB as a version a quality rule of severity quarantine kept out of silver (its change is in
    # the lake's quarantine table with the rule's name): accounted for, reported, not repaired.
    quarantined: list[str] = field(default_factory=list)
    digests: dict[str, bytes | None] = field(default_factory=dict)  # doc_id -> MongoDB's digest (None: absent)
    # Differences whose document has a newer change on its way: not counted, not repaired.
    in_flight: list[str] = field(default_factory=list)
    deferred: bool = False  # the chain did not pass the round's cut in time: nothing was decided
    # Documents in both whose digests differed, compared in full (content, one spelling each side): real
    # mismatches, plus rows whose digest cannot speak for them (loaded before digests, or changed since).
    compared_in_full: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def defer(self) -> None:
        """Nothing decided: every difference of the first look is taken as in flight."""
        self.in_flight = sorted({*self.in_flight, *self.missing, *self.extra, *self.mismatched})
        self.missing, self.extra, self.mismatched, self.deferred = [], [], [], True

    def line(self) -> str:
        """`reconciled: collection=NAME source=...` for one collection; the total has no collection."""
        named = "" if self.collection == ALL else f"collection={self.collection} "
        return (
            f"reconciled: {named}source={self.source} warehouse={self.warehouse} missing={len(self.missing)} "
            f"extra={len(self.extra)} mismatched={len(self.mismatched)}"
            + (f" (deferred: {len(self.in_flight)} documents in flight)" if self.deferred
               else f" (in flight: {len(self.in_flight)})" if self.in_flight else "")
            + (f" (dead-lettered, not loaded: {len(self.dead_lettered)})" if self.dead_lettered else "")
            + (f" (quarantined by a quality rule: {len(self.quarantined)})" if self.quarantined else "")
        )

    def examples(self, limit: int = 5) -> list[str]:
        out = []
        for label, keys in (("missing", self.missing), ("extra", self.extra), ("mismatched", self.mismatched),
                            ("dead-lettered", self.dead_lettered), ("quarantined", self.quarantined),
                            ("in flight", self.in_flight)):
            if keys:
                out.append(f"  {label}: {', '.join(sorted(keys)[:limit])}{' ...' if len(keys) > limit else ''}")
        return out


def _go_on() -> None:
    """No stop request to look at (a command run once)."""


def _source_chunks(collection: Any, ids: list[Any] | None = None,
                   check: Callable[[], object] = _go_on) -> Iterator[pa.RecordBatch]:
    """MongoDB's documents (all, or those with these _ids) as (doc_id, digest) batches: the digest of each
    one's raw BSON, so nothing is decoded but the _id; the next batch is read while this one is hashed.
    `check` runs before each batch (a service's stop request raises there)."""
    options = collection.codec_options
    for raw in raw_batches_ahead(collection, None, CHUNK, ids):
        check()
        doc_ids, digests = [], []
        for document in raw_documents(raw):
            doc_ids.append(raw_doc_id(document, options))
            digests.append(events.raw_digest(document))
        yield pa.record_batch([pa.array(doc_ids, pa.string()), pa.array(digests, pa.binary())],
                              names=list(SOURCE_COLUMNS))


def reconcile(settings: Settings, collection: str, keys: Reconciliation | None = None,
              check: Callable[[], object] = _go_on) -> Reconciliation:
    """Compare MongoDB's `collection` with the warehouse; with `keys` (an earlier result), only the
    documents that differed then (a second look: what is still different after the chain caught up)."""
    require_warehouse(settings.warehouse_path)  # no warehouse: say so before asking MongoDB
    require_matching_lake(settings)  # repairs reach the warehouse through this lake
    client = connect_mongo(settings, "lakehouse-reconcile")
    try:
        db = client[settings.mongo_db]
        began = cluster_time(db)
        if keys is None:
            # The warehouse's count stands in for MongoDB's: this server's count scans the collection,
            # which cost half the read itself only to show an ETA.
            ids, only, total = None, None, current_rows(settings, collection) or None
        else:
            ids = [json_util.loads(keys.ids[k])["_id"] for k in (*keys.missing, *keys.mismatched)]
            only, total = [*keys.missing, *keys.extra, *keys.mismatched], len(ids)
        with Progress(f"reconcile {collection}: read MongoDB", total=total, unit="documents") as progress:
            found = compare(settings, collection, _source_chunks(db[collection], ids, check), only,
                            progress.advance)
        result = Reconciliation(found.source, found.warehouse, found.missing, found.extra, found.mismatched,
                                collection=collection, cluster_time=(began.time, began.inc), ids=found.ids,
                                digests=found.digests)
        if result.mismatched:
            result.compared_in_full = len(result.mismatched)
            result.mismatched = _really_different(settings, db[collection], result)
            log.info("reconcile %s: %d documents compared in full (digests differed), %d really differ",
                     collection, result.compared_in_full, len(result.mismatched))
        if result.missing or result.mismatched:
            # A document whose change the producer dead-lettered (too large for Kafka, say) is behind in the
            # warehouse by design, and a repair would be refused the same way: accounted for, not repaired.
            refused = dead_lettered(settings, collection)
            result.dead_lettered = sorted(k for k in (*result.missing, *result.mismatched) if k in refused)
            result.missing = [k for k in result.missing if k not in refused]
            result.mismatched = [k for k in result.mismatched if k not in refused]
        if result.missing or result.mismatched:
            held = _held_by_quality_rules(settings, db[collection], result)
            result.quarantined = sorted(held)
            result.missing = [k for k in result.missing if k not in held]
            result.mismatched = [k for k in result.mismatched if k not in held]
        return result
    finally:
        client.close()


def dead_lettered(settings: Settings, collection: str) -> set[str]:
    """Identities of `collection`'s documents whose change the producer sent to the dead-letter topic."""
    try:
        ends = end_offsets(settings, [settings.dead_letter_topic])
    except (ServerUnreachable, KafkaTransient) as exc:
        log.warning("cannot read the dead-letter topic (%s): documents it holds are counted as missing", exc)
        return set()
    found: set[str] = set()
    for value in read_values(settings, ends):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(value)
            if body.get("collection") == collection and body.get("doc_id") is not None:
                found.add(body["doc_id"])
    return found


def quality_quarantined(settings: Settings, collection: str, doc_ids: set[str]) -> dict[str, str]:
    """doc_id -> the document of its newest change a quality rule quarantined (canonical spelling)."""
    if not doc_ids:
        return {}
    # Bronze marks them as the lake query writes them; the quarantine table is its copy, made a few
    # seconds later (and holds those of lakes written before bronze carried the mark).
    values: list[str] = []
    for name in (tables.BRONZE, tables.QUARANTINE):
        table = LakeTable.open(settings.table_path(name))
        if table is not None and "quarantine_reason" in table.arrow_schema().names:
            rows = table.read_where(["raw_value", "quarantine_reason"], pc.field("quarantine_reason").is_valid())
            rows = rows.filter(pc.starts_with(pc.fill_null(rows["quarantine_reason"], ""), QUALITY_REASON))
            values += rows["raw_value"].to_pylist()
    newest: dict[str, tuple[tuple[int, int, int], str]] = {}
    for value in values:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = json.loads(value)
            doc_id = body.get("doc_id")
            if body.get("collection") != collection or doc_id not in doc_ids or not body.get("full_document"):
                continue
            order = (body.get("cluster_time_s") or 0, body.get("cluster_time_inc") or 0, body.get("txn_op_index") or 0)
            if doc_id not in newest or newest[doc_id][0] < order:
                newest[doc_id] = (order, events.canonical_document(body["full_document"]))
    return {k: v for k, (_, v) in newest.items()}


def _held_by_quality_rules(settings: Settings, collection: Any, result: Reconciliation) -> set[str]:
    """Of the missing and mismatched documents, those MongoDB holds as the very version a quality rule
    quarantined: the warehouse is right not to have it (a later change that passes brings it back)."""
    held = quality_quarantined(settings, result.collection, {*result.missing, *result.mismatched})
    if not held:
        return set()
    ids = [json_util.loads(result.ids[k])["_id"] for k in held if k in result.ids]
    source = {events.doc_id_text({"_id": d["_id"]}): events.canonical_document(d)
              for d in find_by_ids(collection, ids)}
    return {k for k, document in held.items() if source.get(k) == document}


def _really_different(settings: Settings, collection: Any, result: Reconciliation) -> list[str]:
    """Of documents whose text differs, those whose content differs too (one canonical spelling each
    side), so a change in how documents are spelled is not taken for a change of content."""
    different = []
    for start in range(0, len(result.mismatched), CHUNK):
        chunk = result.mismatched[start:start + CHUNK]
        ids = [json_util.loads(result.ids[k])["_id"] for k in chunk]
        source = {events.doc_id_text({"_id": d["_id"]}): events.canonical_document(d)
                  for d in find_by_ids(collection, ids)}
        warehouse = current_documents(settings, result.collection, chunk)
        different += [k for k in chunk if k not in source or k not in warehouse
                      or events.canonical_document(warehouse[k]) != source[k]]
    return different


def confirmed(settings: Settings, firsts: list[Reconciliation], settle: float, meanwhile: Callable[[], object],
              wait: Callable[[float], object] = time.sleep, catch_up_limit: float = 300.0) -> list[Reconciliation]:
    """The differences of `firsts` (one result per collection) that are real: still there once the chain
    has passed a cut taken after the first look, on documents MongoDB did not change in between (module
    docstring). `meanwhile` (a load) runs while waiting and once the chain has passed the cut. At least
    `settle` seconds pass before the second look. The wait is shared: it does not grow with the number
    of collections. A chain that does not pass the cut within `catch_up_limit` seconds defers the round."""
    differing = [first for first in firsts if not first.ok]
    if not differing:
        return firsts
    cut = _now(settings)
    settled = time.monotonic() + settle
    behind = _chain_passes(settings, cut, [first.collection for first in differing], meanwhile, wait,
                           time.monotonic() + catch_up_limit)
    if behind is not None:
        for first in differing:
            first.defer()
        log.warning("reconcile deferred: %d documents in flight, nothing repaired: %s",
                    sum(len(first.in_flight) for first in differing), behind)
        return firsts
    while time.monotonic() < settled:
        meanwhile()
        wait(min(1.0, max(0.0, settled - time.monotonic())))
    meanwhile()
    results = []
    for first in firsts:
        if first.ok:
            results.append(first)
            continue
        second = reconcile(settings, first.collection, keys=first, check=lambda: wait(0))
        second.source, second.warehouse = first.source, first.warehouse
        second.in_flight = sorted({*first.in_flight, *_changed_since(first, second)})
        results.append(second)
    return results


def _now(settings: Settings) -> tuple[int, int]:
    client = connect_mongo(settings, "lakehouse-reconcile")
    try:
        now = cluster_time(client[settings.mongo_db])
        return now.time, now.inc
    finally:
        client.close()


def _chain_passes(settings: Settings, cut: tuple[int, int], collections: list[str], meanwhile: Callable[[], object],
                  wait: Callable[[float], object], deadline: float) -> str | None:
    """Wait until every change before `cut` is in the lake: the producer has read past it (its checkpoint
    says so, after Kafka acknowledged) and the streaming job has committed the offsets acknowledged then.
    None when it has; else what is behind."""
    store = FileCheckpointStore(settings.producer_checkpoint)
    topics = {settings.topic_for(name) for name in collections}
    target: dict[str, int] | None = None
    while target is None:
        try:
            checkpoint = store.load()
        except CheckpointUnreadable:
            checkpoint = None
        if checkpoint is not None and checkpoint.read_until is not None and checkpoint.read_until > cut:
            target = {k: o for k, o in checkpoint.acked_offsets.items() if split_key(k)[0] in topics}
        elif time.monotonic() > deadline:
            read = "nothing" if checkpoint is None or checkpoint.read_until is None else \
                f"up to {checkpoint.read_until[0]}.{checkpoint.read_until[1]}"
            return (f"the producer has not read MongoDB's changes past cluster time {cut[0]}.{cut[1]} ({read} read; "
                    f"is `lakehouse produce` running?)")
        else:
            meanwhile()
            wait(1.0)
    while True:
        committed = committed_offsets(settings.spark_checkpoint)
        late = {k: (committed.get(k, 0), o) for k, o in target.items() if committed.get(k, 0) < o}
        if not late:
            return None
        if time.monotonic() > deadline:
            key, (at, wanted) = next(iter(late.items()))
            return (f"the streaming job has not committed what Kafka acknowledged before the cut ({len(late)} "
                    f"partitions behind, e.g. {key} at {at} of {wanted}; is `lakehouse stream` running?)")
        meanwhile()
        wait(1.0)


def _changed_since(first: Reconciliation, second: Reconciliation) -> list[str]:
    """Differences of the second look on documents MongoDB changed since the first: in flight. They are
    taken out of `second`'s differences."""
    moved = []
    for name in ("missing", "extra", "mismatched"):
        keys = getattr(second, name)
        still = [k for k in keys if second.digests.get(k) == first.digests.get(k)]
        moved += [k for k in keys if k not in set(still)]
        setattr(second, name, still)
    return moved


def repair(settings: Settings, result: Reconciliation, say: Callable[[str], None] = log.info,
           check: Callable[[], object] = _go_on) -> int:
    """Publish repair events for every difference in `result`; returns how many documents it repaired."""
    if result.ok:
        return 0
    client = connect_mongo(settings, "lakehouse-repair")
    sender = publisher(settings)
    topic = settings.topic_for(result.collection)
    at = result.cluster_time

    def publish(repairs: list[dict[str, Any]]) -> None:
        check()  # a stop request ends the repair between chunks (what was sent is in Kafka, and idempotent)
        sent = sender.send_all(repairs, lambda e: (topic, events.kafka_key(e), events.encode(e)),
                                  flush_timeout=120)
        if sent.failure is not None:
            raise sent.failure
        for event, reason in sent.refused:
            # Refused for good (too large, say), as the producer's change was: reported, never retried, so
            # a periodic round does not fail on it again and again.
            refused.append(event["doc_id"])
            say(f"repair: Kafka refused {result.collection} {event['doc_id']} ({reason}); it is counted as "
                "dead-lettered, not repaired")
        result.repaired += len(sent.acked)
        warehouse_metrics.LOADER_REPAIRED.inc(len(sent.acked))

    refused: list[str] = []
    try:
        collection = client[settings.mongo_db][result.collection]
        wanted = [json_util.loads(result.ids[k])["_id"] for k in (*result.missing, *result.mismatched)]
        for start in range(0, len(wanted), CHUNK):
            publish([events.from_snapshot(settings.mongo_db, result.collection, document, at,
                                          settings.collection(result.collection).key)
                     for document in find_by_ids(collection, wanted[start:start + CHUNK])])
        tombstones = current_keys(settings, result.collection, result.extra)
        for start in range(0, len(tombstones), CHUNK):
            publish([events.repair_tombstone(settings.mongo_db, result.collection, doc_id, document_key, key, at)
                     for doc_id, document_key, key in tombstones[start:start + CHUNK]])
    finally:
        sender.close()
        client.close()
        if refused:
            gone = set(refused)
            result.dead_lettered = sorted({*result.dead_lettered, *gone})
            result.missing = [k for k in result.missing if k not in gone]
            result.mismatched = [k for k in result.mismatched if k not in gone]
    sent_ids = [k for k in (*result.missing, *result.mismatched, *result.extra) if k not in set(refused)]
    if sent_ids:  # which documents, for the operator (and the chaos run's check that only real ones are)
        say(f"repair: documents {json.dumps({result.collection: sent_ids[:REPAIRS_NAMED]})}"
            + (f" and {len(sent_ids) - REPAIRS_NAMED} more" if len(sent_ids) > REPAIRS_NAMED else ""))
    say(f"repair: published {result.repaired} repair events to {topic} ({len(result.missing)} missing, "
        f"{len(result.mismatched)} mismatched from MongoDB as of cluster time {at[0]}.{at[1]}, {len(result.extra)} "
        "deleted); the warehouse has them once the streaming job and the loader have caught up")
    return result.repaired


def reconcile_each(settings: Settings, names: tuple[str, ...] | None = None,
                   check: Callable[[], object] = _go_on) -> list[Reconciliation]:
    """Every captured collection (or the named ones) compared with its warehouse table."""
    return [reconcile(settings, name, check=check) for name in (names or settings.collections)]


def combined(results: list[Reconciliation]) -> Reconciliation:
    """The sum of several collections' results (differences named collection/doc_id)."""
    total = Reconciliation(sum(r.source for r in results), sum(r.warehouse for r in results), collection=ALL,
                           repaired=sum(r.repaired for r in results), deferred=any(r.deferred for r in results),
                           compared_in_full=sum(r.compared_in_full for r in results))
    for r in results:
        for mine, theirs in ((total.missing, r.missing), (total.extra, r.extra), (total.mismatched, r.mismatched),
                             (total.dead_lettered, r.dead_lettered), (total.quarantined, r.quarantined),
                             (total.in_flight, r.in_flight)):
            mine.extend(f"{r.collection}/{k}" for k in theirs)
    return total


def _summary(result: Reconciliation) -> dict[str, Any]:
    return {"collection": result.collection, "source": result.source, "warehouse": result.warehouse,
            "missing": len(result.missing), "extra": len(result.extra), "mismatched": len(result.mismatched),
            "dead_lettered": len(result.dead_lettered), "quarantined": len(result.quarantined),
            "in_flight": len(result.in_flight), "deferred": int(result.deferred), "repaired": result.repaired,
            "compared_in_full": result.compared_in_full}


def record(settings: Settings, results: list[Reconciliation], confirmed_after: float | None = None) -> None:
    """The last reconcile's outcome, in total and per collection, for `status` and the metrics."""
    total = combined(results)
    write_json_atomically(settings.reconcile_state, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **_summary(total),
        "confirmed_after_s": confirmed_after, "examples": total.examples(),
        "collections": [_summary(r) for r in results],
    })


def lines(results: list[Reconciliation]) -> list[str]:
    """One `reconciled:` line per collection, then the total line (the last line, in the format of one)."""
    return [*(r.line() for r in results), combined(results).line()]


def round_of(settings: Settings, do_repair: bool, settle: float, meanwhile: Callable[[], object],
             wait: Callable[[float], object] = time.sleep,
             say: Callable[[str], None] = log.info) -> list[Reconciliation]:
    """One periodic reconcile (the loader service, `run-all --follow`): look at every collection, look again
    after `settle` seconds of loading at what differed, repair what is still different (or only report
    it), record."""
    def check() -> None:  # the service's wait raises Interrupted on a stop request: a round ends within seconds
        wait(0)

    results = confirmed(settings, reconcile_each(settings, check=check), settle, meanwhile, wait)
    if do_repair:
        for result in results:
            repair(settings, result, say, check)
    record(settings, results, settle)
    *each, total = lines(results)
    how = ("deferred: the chain did not pass the round's cut in time, nothing repaired"
           if combined(results).deferred else "differences only where the chain had passed the round's cut")
    for line in each:
        say(f"{line} ({how})")
    say(f"{total}{f' repaired={combined(results).repaired}' if do_repair else ''} ({how})")
    return results
