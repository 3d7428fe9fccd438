"""The warehouse's side of a reconcile: compare MongoDB's (identity, hash) pairs, streamed in by the
caller, with the warehouse's current rows, and read back the rows that differ.

MongoDB's pairs go into a scratch DuckDB table as they arrive; meanwhile the warehouse's digests are
streamed into another in one short read-only query (the loader gets the file back at once); then
DuckDB joins them.
Only identities and hashes are held, never the documents, and in a scratch database on disk under a
memory limit: DuckDB spills what does not fit, so memory stays flat however many documents there are.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from lakehouse.contracts.events import DIGEST_CHARS
from lakehouse.contracts.types import ident
from lakehouse.core.config import Settings, for_stage
from warehouse.connection import connect, same_process_turn

SOURCE_COLUMNS = ("doc_id", "digest")  # what the caller streams in, per document
# The warehouse's digest of a row: the raw-BSON half of its document_digest (as bytes, like the source's),
# while its document is still the text that digest was made with (events.document_digest); else null,
# which differs from anything.
_VERIFIED_DIGEST = (f"CASE WHEN right(document_digest, {DIGEST_CHARS}) = left(sha256(document), {DIGEST_CHARS}) "
                    f"THEN unhex(left(document_digest, {DIGEST_CHARS})) END")


def _key_json(doc_id: str) -> str:
    """The documentKey of a doc_id, as events.key_json spells it ({"_id": <the _id's Extended JSON>})."""
    return f'{{"_id": {doc_id}}}'


@dataclass
class Differences:
    source: int = 0
    warehouse: int = 0
    missing: list[str] = field(default_factory=list)  # in the source, not in the warehouse
    extra: list[str] = field(default_factory=list)  # in the warehouse, not in the source
    mismatched: list[str] = field(default_factory=list)  # in both, different hash
    ids: dict[str, str] = field(default_factory=dict)  # doc_id -> _id as Extended JSON (missing, mismatched)
    digests: dict[str, bytes | None] = field(default_factory=dict)  # doc_id -> the source's digest of a difference


SCRATCH_MEMORY = "128MB"  # DuckDB's limit for the comparison; beyond it, it spills to the scratch folder
WAREHOUSE_SCAN_MEMORY = "64MB"  # the read-only scan of the warehouse: it streams, a small pool is enough
STREAMED_ROWS = 100_000  # warehouse hashes per batch copied into the scratch database


def compare(settings: Settings, collection: str, source: Iterable[pa.RecordBatch], only: list[str] | None = None,
            advance: Callable[[int], object] = lambda _: None) -> Differences:
    """Differences between `source` (batches of SOURCE_COLUMNS, the digest events.raw_digest of the
    document's BSON) and the collection's current rows in the warehouse (all, or `only` those doc_ids)."""
    settings = for_stage(settings, "warehouse")
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # on disk, not a /tmp that may be memory
    with tempfile.TemporaryDirectory(prefix="reconcile-", dir=settings.state_dir) as folder:
        scratch = duckdb.connect(str(Path(folder) / "scratch.duckdb"))
        try:
            scratch.execute(f"SET memory_limit = '{SCRATCH_MEMORY}'")
            scratch.execute(f"SET temp_directory = '{Path(folder) / 'spill'}'")
            scratch.execute("SET preserve_insertion_order = false")
            return _compare(scratch, settings, collection, source, only, advance)
        finally:
            scratch.close()


def _compare(scratch: duckdb.DuckDBPyConnection, settings: Settings, collection: str,
             source: Iterable[pa.RecordBatch], only: list[str] | None, advance: Callable[[int], object]) -> Differences:
    scratch.execute("CREATE TABLE src (doc_id VARCHAR, digest BLOB)")
    scratch.execute("CREATE TABLE wh (doc_id VARCHAR, digest BLOB)")
    # The warehouse's side is copied meanwhile, on a connection of its own: DuckDB runs without the GIL,
    # so it uses the time the caller waits for MongoDB instead of adding its own after the read.
    with ThreadPoolExecutor(1, thread_name_prefix="reconcile-warehouse") as pool:
        copied = pool.submit(_copy_warehouse_digests, scratch.cursor(), settings, _table(settings, collection), only)
        try:
            for batch in source:
                scratch.register("chunk", batch)
                scratch.execute("INSERT INTO src SELECT * FROM chunk")
                scratch.unregister("chunk")
                advance(batch.num_rows)
        finally:
            copied.result()  # its error, if any; and never a scratch database closed under it
    found = Differences()
    rows = scratch.execute(
        "SELECT coalesce(s.doc_id, w.doc_id), s.digest, s.doc_id IS NULL, w.doc_id IS NULL "
        "FROM src s FULL OUTER JOIN wh w ON s.doc_id = w.doc_id "
        "WHERE s.doc_id IS NULL OR w.doc_id IS NULL OR s.digest IS DISTINCT FROM w.digest").fetchall()
    for doc_id, digest, not_in_source, not_in_warehouse in rows:  # a warehouse digest may be null (a mismatch)
        found.digests[doc_id] = digest
        if not_in_source:
            found.extra.append(doc_id)
        else:
            found.ids[doc_id] = _key_json(doc_id)
            (found.missing if not_in_warehouse else found.mismatched).append(doc_id)
    found.source = int(scratch.execute("SELECT count(*) FROM src").fetchall()[0][0])
    found.warehouse = int(scratch.execute("SELECT count(*) FROM wh").fetchall()[0][0])
    return found


def _table(settings: Settings, collection: str) -> str:
    return settings.collection(collection).table


def _copy_warehouse_digests(scratch: duckdb.DuckDBPyConnection, settings: Settings, table: str,
                            only: list[str] | None) -> None:
    """(doc_id, digest) of a current-state table into the scratch table `wh`, a batch at a time (none when
    a collection new to the spec has no table yet)."""
    # A load of this process in the middle (the loader service's, during a round) waits for the copy, and
    # the copy for it: DuckDB refuses one file open read-only and read-write in one process.
    with same_process_turn:
        con = connect(settings.warehouse_path, read_only=True)
        try:
            # Its own buffer pool would otherwise keep the documents it scanned, up to most of the machine's
            # memory.
            con.execute(f"SET memory_limit = '{WAREHOUSE_SCAN_MEMORY}'")
            if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ?", [table]).fetchall():
                return
            query = f"SELECT doc_id, {_VERIFIED_DIGEST} AS digest FROM {ident(table)}"
            if only is not None:
                con.register("wanted", pa.table({"doc_id": pa.array(only, pa.string())}))
                query += " WHERE doc_id IN (SELECT doc_id FROM wanted)"
            reader = con.sql(query).to_arrow_reader(STREAMED_ROWS)
            for batch in reader:
                scratch.register("chunk", batch)
                scratch.execute("INSERT INTO wh SELECT * FROM chunk")
                scratch.unregister("chunk")
        finally:
            con.close()


def current_rows(settings: Settings, collection: str) -> int:
    """How many documents the warehouse holds of `collection` (0 before its table exists)."""
    settings = for_stage(settings, "warehouse")
    con = connect(settings.warehouse_path, read_only=True)
    try:
        table = _table(settings, collection)
        if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ?", [table]).fetchall():
            return 0
        return int(con.execute(f"SELECT count(*) FROM {ident(table)}").fetchall()[0][0])
    finally:
        con.close()


def current_documents(settings: Settings, collection: str, doc_ids: list[str]) -> dict[str, str]:
    """doc_id -> the current document (Extended JSON) of those rows the warehouse has."""
    settings = for_stage(settings, "warehouse")
    if not doc_ids:
        return {}
    con = connect(settings.warehouse_path, read_only=True)
    try:
        con.register("wanted", pa.table({"doc_id": pa.array(doc_ids, pa.string())}))
        return dict(con.execute(f"SELECT doc_id, document FROM {ident(_table(settings, collection))} WHERE doc_id IN "
                                "(SELECT doc_id FROM wanted)").fetchall())
    finally:
        con.close()


def current_keys(settings: Settings, collection: str,
                 doc_ids: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(doc_id, documentKey as Extended JSON, Kafka key) of warehouse rows, for their tombstones."""
    settings = for_stage(settings, "warehouse")
    if not doc_ids:
        return []
    con = connect(settings.warehouse_path, read_only=True)
    try:
        con.register("wanted", pa.table({"doc_id": pa.array(doc_ids, pa.string())}))
        key_column = settings.collection(collection).key_column
        key = ident(key_column) if key_column else "doc_id"
        rows = con.execute(f"SELECT doc_id, document, {key} FROM {ident(_table(settings, collection))} "
                           "WHERE doc_id IN (SELECT doc_id FROM wanted)").fetchall()
    finally:
        con.close()
    keys = []
    for doc_id, document, kafka_key in rows:
        try:
            document_key = json.dumps({"_id": json.loads(document)["_id"]}, sort_keys=True)
        except (TypeError, ValueError, KeyError):
            document_key = None
        keys.append((doc_id, document_key, kafka_key))
    return keys
