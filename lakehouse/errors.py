"""One-line errors for servers that cannot be reached: which server, at which address, and what to do."""

from __future__ import annotations

import re

from lakehouse.config import Settings

REFUSED_CODES = {13, 18}  # Unauthorized, AuthenticationFailed
START_HINT = "start the local servers with `make servers` (or `lakehouse servers start`)"


class ServerUnreachable(Exception):
    """MongoDB or Kafka did not answer; the message names the address and the next step."""


class NotAReplicaSet(ServerUnreachable):
    """MongoDB answered, but as a standalone server, which has no change streams."""


_USERINFO = re.compile(r"(//[^:/@\s]+):[^@\s]*@")  # the password of scheme://user:password@host
_SECRET_OPTIONS = re.compile(r"(?i)((?:password|pwd|secret|AWS_SESSION_TOKEN)[=:])[^&,;\s'\"]+")


def redact(text: str) -> str:
    """`text` with every password of a URI (and secret-looking URI options) replaced by ***."""
    return _SECRET_OPTIONS.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


def mongo_unreachable(settings: Settings, cause: BaseException) -> ServerUnreachable:
    reason = str(cause).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return ServerUnreachable(
        f"MongoDB at {redact(settings.mongo_uri)} is not reachable ({reason}); {START_HINT}, "
        "or point MONGO_URI / --mongo-uri at a running replica set"
    )


def mongo_refused(settings: Settings, cause: BaseException) -> ServerUnreachable:
    reason = str(cause).split(", full error:")[0]
    return ServerUnreachable(
        f"MongoDB at {redact(settings.mongo_uri)} refused this client ({reason}); check the user, password and "
        "authSource in MONGO_URI / --mongo-uri, and that the user may read (and, for the generator, write) "
        f"database {settings.mongo_db!r}"
    )


def kafka_unreachable(settings: Settings, cause: BaseException | str) -> ServerUnreachable:
    return ServerUnreachable(
        f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({cause}); {START_HINT}, "
        "or point KAFKA_BOOTSTRAP_SERVERS / --kafka at a running broker"
    )


def explain(settings: Settings, exc: BaseException) -> ServerUnreachable | None:
    """The one-line form of a client library's connection error, or None for other errors."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError
    from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

    if isinstance(exc, ServerUnreachable):
        return exc
    if isinstance(exc, ServerSelectionTimeoutError):
        return mongo_unreachable(settings, exc)
    if isinstance(exc, OperationFailure) and exc.code in REFUSED_CODES:
        return mongo_refused(settings, exc)
    if isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaTimeoutError) and "bootstrap" in str(exc)):
        return kafka_unreachable(settings, exc)
    return None
