"""One-line errors for servers that cannot be reached: which server, at which address, and what to do."""

from __future__ import annotations

import re

from lakehouse.config import Settings

START_HINT = "start the local servers with `make servers` (or `lakehouse servers start`)"


class ServerUnreachable(Exception):
    """MongoDB or Kafka did not answer; the message names the address and the next step."""


def redact(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def mongo_unreachable(settings: Settings, cause: BaseException) -> ServerUnreachable:
    reason = str(cause).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return ServerUnreachable(
        f"MongoDB at {redact(settings.mongo_uri)} is not reachable ({reason}); {START_HINT}, "
        "or point MONGO_URI / --mongo-uri at a running replica set"
    )


def kafka_unreachable(settings: Settings, cause: BaseException | str) -> ServerUnreachable:
    return ServerUnreachable(
        f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({cause}); {START_HINT}, "
        "or point KAFKA_BOOTSTRAP_SERVERS / --kafka at a running broker"
    )


def explain(settings: Settings, exc: BaseException) -> ServerUnreachable | None:
    """The one-line form of a client library's connection error, or None for other errors."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError
    from pymongo.errors import ServerSelectionTimeoutError

    if isinstance(exc, ServerUnreachable):
        return exc
    if isinstance(exc, ServerSelectionTimeoutError):
        return mongo_unreachable(settings, exc)
    if isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaTimeoutError) and "bootstrap" in str(exc)):
        return kafka_unreachable(settings, exc)
    return None
