"""Logging for every command: plain lines for people, JSON lines (--log-format json) for machines."""

from __future__ import annotations

import json
import logging
import sys
import time

NOISY = ("kafka", "py4j", "pymongo")
# kafka-python logs every refused connection at ERROR; our own code names an unreachable broker once.
CHATTY = ("kafka.net", "kafka.conn", "kafka.client_async")
_format, _level = "plain", "INFO"


def is_json() -> bool:
    return _format == "json"


def cli_options() -> list[str]:
    """This process's logging as `lakehouse` options, for the processes it starts."""
    return ["--log-level", _level, "--log-format", _format]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        progress = getattr(record, "progress", None)
        if progress is not None:
            body["progress"] = progress
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


class Redacting(logging.Formatter):
    """Masks passwords in every formatted line, whoever logged it (our code or a client library's)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        from lakehouse.core.errors import redact

        return redact(self.inner.format(record))


def configure(level: str = "INFO", fmt: str = "plain") -> None:
    global _format, _level
    _format, _level = fmt, level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Redacting(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if level.upper() != "DEBUG":
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.CRITICAL)
