"""The one way this project opens MongoDB, so every stage decodes documents identically."""

from __future__ import annotations

from pymongo import MongoClient

from lakehouse.config import Settings


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
    from lakehouse.errors import NotAReplicaSet, redact

    hello = client.admin.command("hello")
    if not hello.get("setName") and hello.get("msg") != "isdbgrid":
        raise NotAReplicaSet(
            f"MongoDB at {redact(settings.mongo_uri)} is a standalone server, and change streams need a "
            "replica set: start mongod with --replSet rs0 and run rs.initiate() once (a one-member set is "
            "enough), or point MONGO_URI / --mongo-uri at a replica set"
        )
