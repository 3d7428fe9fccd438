"""Adapters: the only modules that import a client library (pymongo, kafka-python, deltalake). They
hand the layers above plain values and the project's own errors (lakehouse.core.errors)."""

from __future__ import annotations

from lakehouse.core.config import Settings
from lakehouse.core.errors import LakehouseError


def explain(settings: Settings, exc: BaseException) -> LakehouseError | None:
    """The project's one-line error for a client library's exception (a server down, credentials
    refused), the error itself when it is already ours, or None for an unexpected one."""
    from lakehouse.adapters import kafka, mongo

    if isinstance(exc, LakehouseError):
        return exc
    return mongo.explain(settings, exc) or kafka.explain(settings, exc)
