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
