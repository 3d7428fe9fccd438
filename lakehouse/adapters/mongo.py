"""The one module that talks to MongoDB through pymongo: connections, the replica-set check, change
streams and cluster time, and the translation of pymongo's errors into the project's own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError, ServerSelectionTimeoutError

from lakehouse.core.config import Settings
from lakehouse.core.errors import (
    START_HINT,
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
    commands that should rather report MongoDB as down, like `status`."""
    options = {} if timeout_ms is None else {"serverSelectionTimeoutMS": timeout_ms}
    # tz_aware: dates are UTC instants. DATETIME_AUTO: a date outside Python's range (legal in BSON)
    # decodes as DatetimeMS instead of failing the whole change-stream batch.
    return MongoClient(settings.mongo_uri, tz_aware=True, datetime_conversion="DATETIME_AUTO", appname=app,
                       **options)


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


class ChangeStream:
    """A database's change stream whose errors are the project's: a token MongoDB's history no longer
    reaches is `HistoryLost`, other server answers `MongoFailed`."""

    def __init__(self, db: Database, pipeline: list[dict[str, Any]], resume_token: Mapping[str, Any] | None = None,
                 start_at: Any = None, max_await_time_ms: int | None = None) -> None:
        options: dict[str, Any] = {"full_document": "updateLookup", "full_document_before_change": "whenAvailable"}
        if resume_token is not None:
            options["start_after"] = resume_token
        elif start_at is not None:
            options["start_at_operation_time"] = start_at
        if max_await_time_ms is not None:
            options["max_await_time_ms"] = max_await_time_ms
        with translated():
            self._stream = db.watch(pipeline, **options)

    def try_next(self) -> Mapping[str, Any] | None:
        with translated():
            return self._stream.try_next()

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._stream.resume_token

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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
    if isinstance(exc, ServerSelectionTimeoutError):
        return mongo_unreachable(settings, exc)
    if isinstance(exc, OperationFailure) and exc.code in REFUSED_CODES:
        return mongo_refused(settings, exc)
    return None
