"""The one module that talks to MongoDB through pymongo: connections, the replica-set check, change
streams and cluster time, and the translation of pymongo's errors into the project's own."""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
)
from pymongo.operations import DeleteOne, InsertOne, ReplaceOne, UpdateOne

from lakehouse.contracts import events
from lakehouse.core.config import Settings
from lakehouse.core.errors import (
    START_HINT,
    ConfigError,
    LakehouseError,
    NotAReplicaSet,
    Permanent,
    ServerRefused,
    ServerUnreachable,
    redact,
)

# Server answers meaning "your resume token is no longer usable".
HISTORY_LOST_CODES = {286, 280, 260, 9}
REFUSED_CODES = {13, 18}  # Unauthorized, AuthenticationFailed


class HistoryLost(Permanent):
    """MongoDB's history (the oplog) no longer reaches back to where a change stream should resume."""


class MongoFailed(LakehouseError):
    """Another error of a MongoDB command; the message has the server's answer."""


def connect(settings: Settings, app: str = "lakehouse", timeout_ms: int | None = None) -> MongoClient:
    """`timeout_ms` bounds server selection (pymongo waits 30 s, to ride out an election) for
    commands that should rather report MongoDB as down, like `status`; a serverSelectionTimeoutMS
    the URI sets itself wins."""
    in_uri = "serverselectiontimeoutms=" in settings.mongo_uri.partition("?")[2].lower()
    options = {} if timeout_ms is None or in_uri else {"serverSelectionTimeoutMS": timeout_ms}
    # tz_aware: dates are UTC instants. DATETIME_AUTO: a date outside Python's range (legal in BSON)
    # decodes as DatetimeMS instead of failing the whole change-stream batch.
    try:
        return MongoClient(settings.mongo_uri, tz_aware=True, datetime_conversion="DATETIME_AUTO", appname=app,
                           **options)
    except ConfigurationError as exc:  # a mongodb+srv:// URI is resolved here, in DNS
        if "does not exist" in str(exc) or "does not contain an answer" in str(exc):  # NXDOMAIN, NoAnswer
            raise ConfigError(f"MONGO_URI={redact(settings.mongo_uri)!r} names no MongoDB in DNS ({exc}); check "
                              "the host name of the mongodb+srv:// URI") from None
        raise mongo_unreachable(settings, exc) from None


def newest_change_time(client: MongoClient, db: str, collections: Iterable[str]) -> float | None:
    """When (cluster time, epoch seconds) the newest change to the collections was made: the oplog's
    newest entry for them, the clock the warehouse's changes carry too. A user who may not read the oplog
    gets the newest `updated_at` that is a date (a document's own field of another type, such as a
    Timestamp, sorts above every date and must not stand for the newest change)."""
    names = [f"{db}.{name}" for name in collections]
    try:
        entry = next(iter(client["local"]["oplog.rs"].find(
            {"$or": [{"ns": {"$in": names}}, {"ns": "admin.$cmd", "o.applyOps.ns": {"$in": names}}]},
            {"ts": 1}).sort("$natural", -1).limit(1).max_time_ms(5000)), None)
        return None if entry is None else float(entry["ts"].time)
    except OperationFailure:  # not authorized on `local`, or the scan took too long
        pass
    newest = None
    for name in collections:
        found = next(iter(client[db][name].find({"updated_at": {"$type": "date"}}, {"updated_at": 1})
                          .sort("updated_at", -1).limit(1)), None)
        if found is not None:
            value = found["updated_at"]
            seconds = value.timestamp() if isinstance(value, datetime) else int(value) / 1000  # DatetimeMS
            newest = seconds if newest is None else max(newest, seconds)
    return newest


def require_replica_set(client: MongoClient, settings: Settings) -> None:
    """Change streams need a replica set (or a sharded cluster): say so at once, with the fix."""
    hello = client.admin.command("hello")
    if not hello.get("setName") and hello.get("msg") != "isdbgrid":
        raise NotAReplicaSet(
            f"MongoDB at {redact(settings.mongo_uri)} is a standalone server, and change streams need a "
            "replica set: start mongod with --replSet rs0 and run rs.initiate() once (a one-member set is "
            "enough), or point MONGO_URI / --mongo-uri at a replica set"
        )


def is_ready_primary(settings: Settings, timeout_ms: int = 1000) -> bool:
    """A replica-set member that takes writes answers at MONGO_URI (for server start-up)."""
    client: MongoClient = MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        hello = client.admin.command("hello")
        return bool(hello.get("setName")) and bool(hello.get("isWritablePrimary"))
    except PyMongoError:
        return False
    finally:
        client.close()


def cluster_time(db: Database) -> Any:
    """MongoDB's cluster time now (a bson Timestamp)."""
    return db.command("ping")["operationTime"]


def enable_pre_images(db: Database, name: str) -> str | None:
    """Create `name` if needed and turn on its pre-images; the server's refusal as text, or None."""
    try:
        if name not in db.list_collection_names(filter={"name": name}):
            db.create_collection(name)
        db.command("collMod", name, changeStreamPreAndPostImages={"enabled": True})
        return None
    except PyMongoError as exc:
        return str(exc)


class WriteBuffer:
    """Writes held and sent together: one unordered bulk_write per collection when flushed, instead of a
    round trip per write. On a busy machine every round trip waits its turn for a core, so a writer making
    changes one at a time is held to a few dozen per second by those waits, not by MongoDB's work.

    Each document is written at most once per flush (a second write to one sends what is held first), so
    leaving the order inside a collection to the server changes nothing; collections are flushed in the
    order they were first given (the constructor's first), so referenced documents can go before the
    documents that reference them."""

    def __init__(self, collections: tuple[Collection, ...] = ()) -> None:
        self._held: dict[str, tuple[Collection, list[Any]]] = {c.full_name: (c, []) for c in collections}
        self._touched: set[tuple[str, Any]] = set()

    def __len__(self) -> int:
        return sum(len(ops) for _, ops in self._held.values())

    def insert(self, collection: Collection, key: Any, document: Mapping[str, Any]) -> None:
        self._hold(collection, key, InsertOne(document))

    def update(self, collection: Collection, key: Any, selector: Mapping[str, Any], update: Mapping[str, Any],
               upsert: bool = False) -> None:
        self._hold(collection, key, UpdateOne(selector, update, upsert=upsert))

    def replace(self, collection: Collection, key: Any, selector: Mapping[str, Any],
                document: Mapping[str, Any]) -> None:
        self._hold(collection, key, ReplaceOne(selector, document))

    def delete(self, collection: Collection, key: Any, selector: Mapping[str, Any]) -> None:
        self._hold(collection, key, DeleteOne(selector))

    def _hold(self, collection: Collection, key: Any, operation: Any) -> None:
        if (collection.full_name, key) in self._touched:
            self.flush()
        self._touched.add((collection.full_name, key))
        self._held.setdefault(collection.full_name, (collection, []))[1].append(operation)

    def flush(self) -> None:
        """Send what is held. On an error what was held is dropped (a bulk write may have applied part of
        it): the caller reconnects and goes on, as after a failed single write."""
        held = [(collection, list(ops)) for collection, ops in self._held.values() if ops]
        for _, ops in self._held.values():
            ops.clear()
        self._touched.clear()
        for collection, ops in held:
            collection.bulk_write(ops, ordered=False)


class ChangeStream:
    """A database's change stream whose errors are the project's: a token MongoDB's history no longer
    reaches is `HistoryLost`, other server answers `MongoFailed`.

    With `prefetch`, a thread reads ahead (up to that many events) while the caller encodes and
    publishes what it has: MongoDB's next batch is fetched during the work on the last one. The caller
    sees the same sequence, and `resume_token` is still the token of the last event it was given (or the
    post-batch token of the idle stream it was told about), never one of an event read ahead."""

    def __init__(self, db: Database, pipeline: list[dict[str, Any]], resume_token: Mapping[str, Any] | None = None,
                 start_at: Any = None, max_await_time_ms: int | None = None, prefetch: int = 0) -> None:
        options: dict[str, Any] = {"full_document": "updateLookup", "full_document_before_change": "whenAvailable"}
        if resume_token is not None:
            options["start_after"] = resume_token
        elif start_at is not None:
            options["start_at_operation_time"] = start_at
        if max_await_time_ms is not None:
            options["max_await_time_ms"] = max_await_time_ms
        with translated():
            self._stream = db.watch(pipeline, **options)
        self._token = self._stream.resume_token
        self._closed = threading.Event()
        self._ahead: queue.Queue[list[tuple[Any, Any]]] | None = None
        self._taken: collections.deque[tuple[Any, Any]] = collections.deque()
        self._reader: threading.Thread | None = None
        if prefetch > 0:
            self._ahead = queue.Queue(maxsize=max(2, prefetch // HANDOVER_EVENTS))
            self._reader = threading.Thread(target=self._read_ahead, name="change-stream-prefetch", daemon=True)
            self._reader.start()

    def _read_ahead(self) -> None:
        """Owns the pymongo stream: every event (or None when idle) with the token after it, in order;
        an error is handed over in its place and ends the reading. Events go over in lists, each as
        much as the last getMore brought (up to HANDOVER_EVENTS): a hand-over per event cost the two
        threads a lock round and a GIL switch each, a third of what the reading itself costs."""
        assert self._ahead is not None
        chunk: list[tuple[Any, Any]] = []
        try:
            while not self._closed.is_set():
                try:
                    with translated():
                        change = self._stream.try_next()
                    item: tuple[Any, Any] = (change, self._stream.resume_token)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    item = (_FAILED, exc)
                chunk.append(item)
                last = item[0] is _FAILED or (item[0] is not None and item[0].get("operationType") == "invalidate")
                if not last and item[0] is not None and len(chunk) < HANDOVER_EVENTS and self._buffered():
                    continue  # the next event is already here: no wait for it delays this one
                while not self._closed.is_set():
                    try:
                        self._ahead.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                chunk = []
                if last:
                    return  # nothing follows an error or an invalidate on this stream
        finally:
            self._stream.close()

    def _buffered(self) -> bool:
        """Whether pymongo holds more events of its last batch (the next try_next returns at once).
        pymongo has no public call for it; without the attribute every event is handed over alone."""
        data = getattr(getattr(self._stream, "_cursor", None), "_data", None)
        return bool(data) if isinstance(data, collections.deque) else False

    def try_next(self) -> Mapping[str, Any] | None:
        if self._ahead is None:
            with translated():
                change = self._stream.try_next()
            self._token = self._stream.resume_token
            return change
        while not self._taken:
            try:
                self._taken.extend(self._ahead.get(timeout=0.2))
            except queue.Empty:
                if self._reader is not None and not self._reader.is_alive() and self._ahead.empty():
                    raise MongoFailed("the change stream's reader stopped") from None
        change, token = self._taken.popleft()
        if change is _FAILED:
            raise token
        self._token = token
        return change

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._token

    def close(self) -> None:
        self._closed.set()
        if self._reader is None:
            self._stream.close()
            return
        self._reader.join(timeout=10)  # it finishes its getMore (at most the server's await time), then closes

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


_FAILED = object()  # in place of an event: the reader's error follows
HANDOVER_EVENTS = 256  # at most this many events per hand-over from the reading thread


IDS_PER_QUERY = 32  # MongoDB 8.2 takes time growing with the square of an `_id $in` list's length to run
# it: 5,000 ids took 19-26 s in one query here, 0.4 s in queries of 25-50 ids (and a full scan 0.13 s)


def by_ids(ids: Sequence[Any]) -> list[dict[str, Any]]:
    """Queries for the documents with these _ids, IDS_PER_QUERY ids each (see there)."""
    return [{"_id": {"$in": list(ids[start:start + IDS_PER_QUERY])}} for start in range(0, len(ids), IDS_PER_QUERY)]


def find_by_ids(collection: Collection, ids: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """The documents with these _ids (those that exist), a few ids per query."""
    for query in by_ids(ids):
        yield from collection.find(query)


def raw_batches_ahead(collection: Collection, query: Mapping[str, Any] | None = None,
                      batch_size: int = 10_000, ids: Sequence[Any] | None = None) -> Iterator[bytes]:
    """The batches of a find() as raw BSON (documents back to back), read by a thread one batch ahead.

    A cursor alone asks for its next batch only when the caller is done with this one, so MongoDB and
    the caller take turns: a scan that does work per document (reconcile hashes each one) costs the
    server's time plus the caller's. Here the server builds the next batch meanwhile. The thread only
    moves bytes, so it hardly competes with the caller for the GIL. With `ids`, the documents with those
    _ids, a few per query (IDS_PER_QUERY)."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=2)
    done = threading.Event()

    def hand_over(item: Any) -> bool:
        while not done.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            with translated():
                for one in ([dict(query or {})] if ids is None else by_ids(ids)):
                    cursor = collection.find_raw_batches(one, batch_size=batch_size)
                    try:
                        for raw in cursor:
                            if not hand_over(raw):
                                return  # the caller stopped reading
                    finally:
                        cursor.close()
            hand_over(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            hand_over((_FAILED, exc))

    reader = threading.Thread(target=read, name="find-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = ahead.get(timeout=0.2)
            except queue.Empty:
                if not reader.is_alive() and ahead.empty():
                    raise MongoFailed("the find()'s reading thread stopped") from None
                continue
            if item is None:
                return
            if isinstance(item, tuple):
                raise item[1]
            yield item
    finally:
        done.set()
        reader.join(timeout=10)


def raw_documents(batch: bytes) -> Iterator[memoryview]:
    """Each document of a raw batch, as a view of its bytes (no copy, no decoding)."""
    view = memoryview(batch)
    at = 0
    while at < len(view):
        size = int.from_bytes(view[at:at + 4], "little")
        yield view[at:at + size]
        at += size


# Bytes after an element's name, by BSON type, for the types an _id mostly has (the rest: a full decode).
_FIXED_SIZE = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
_SIZED = {0x02: 4, 0x03: 0, 0x04: 0, 0x05: 5}  # the int32 at the value's start, plus this many bytes


def raw_doc_id(document: memoryview, options: CodecOptions) -> str:
    """events.doc_id_text of a raw document, read straight from the bytes for the _ids most collections
    have (an int, an ObjectId, a string first in the document); any other through a decode of the _id."""
    if document[5:9] == b"_id\x00":
        kind = document[4]
        if kind == 0x10:  # int32
            return str(int.from_bytes(document[9:13], "little", signed=True))
        if kind == 0x12:  # int64: relaxed Extended JSON writes it as a plain number
            return str(int.from_bytes(document[9:17], "little", signed=True))
        if kind == 0x07:  # ObjectId
            return f'{{"$oid": "{document[9:21].hex()}"}}'
        if kind == 0x02:  # string: JSON's own escaping (ASCII), as json.dumps writes it
            size = int.from_bytes(document[9:13], "little")
            if 13 + size < len(document):
                return encode_basestring_ascii(str(document[13:13 + size - 1], "utf-8"))
    return events.doc_id_text({"_id": raw_id(document, options)})


def raw_id(document: memoryview, options: CodecOptions) -> Any:
    """A raw document's _id, decoding only that element when it comes first (MongoDB keeps _id first)."""
    if document[5:9] == b"_id\x00":
        kind = document[4]
        size = _FIXED_SIZE.get(kind)
        if size is None and kind in _SIZED:
            size = int.from_bytes(document[9:13], "little") + _SIZED[kind]
        if size is not None and 9 + size < len(document):
            element = document[4:9 + size]
            return bson.decode(b"".join(((len(element) + 5).to_bytes(4, "little"), element, b"\x00")),
                               options)["_id"]
    return bson.decode(document, options)["_id"]


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """pymongo's errors raised inside become the project's: HistoryLost, MongoFailed (refusals of the
    credentials stay pymongo's, for explain() to name the URI)."""
    try:
        yield
    except OperationFailure as exc:
        if exc.code in HISTORY_LOST_CODES:
            raise HistoryLost(f"MongoDB cannot resume the change stream there: {_answer(exc)}") from exc
        if exc.code not in REFUSED_CODES:
            raise MongoFailed(f"MongoDB refused a command: {_answer(exc)}") from exc
        raise


def _answer(exc: OperationFailure) -> str:
    """The server's message and code, without the full reply (cluster time, signature)."""
    details = exc.details or {}
    name = f", {details['codeName']}" if "codeName" in details else ""
    return f"{details.get('errmsg', str(exc))} (code {exc.code}{name})"


def mongo_unreachable(settings: Settings, cause: BaseException) -> ServerUnreachable:
    reason = str(cause).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return ServerUnreachable(
        f"MongoDB at {redact(settings.mongo_uri)} is not reachable ({reason}); {START_HINT}, "
        "or point MONGO_URI / --mongo-uri at a running replica set"
    )


def mongo_refused(settings: Settings, cause: BaseException) -> ServerRefused:
    reason = str(cause).split(", full error:")[0]
    return ServerRefused(
        f"MongoDB at {redact(settings.mongo_uri)} refused this client ({reason}); check the user, password and "
        "authSource in MONGO_URI / --mongo-uri, and that the user may read (and, for the generator, write) "
        f"database {settings.mongo_db!r}"
    )


def explain(settings: Settings, exc: BaseException) -> LakehouseError | None:
    """The one-line form of a pymongo connection or authentication error, or None for others."""
    if isinstance(exc, ConnectionFailure):  # no server to select, a lost connection, "not primary"
        return mongo_unreachable(settings, exc)
    if isinstance(exc, OperationFailure) and exc.code in REFUSED_CODES:
        return mongo_refused(settings, exc)
    return None
