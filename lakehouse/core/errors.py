"""The project's one exception hierarchy, and the password masking every printed line goes through.

Every error the pipeline raises on purpose is a `LakehouseError`: its message is one line naming the
input or server at fault and what to do, so the CLI prints it as is (exit code 1). Where a retry
depends on it, an error is `Transient` (trying again later may succeed: a server away, a broker that
has not acknowledged) or `Permanent` (trying again cannot help: a refusal, a wrong server, bad data).
The adapters translate their client library's errors into these; nothing above them sees a library's
exception types.
"""

from __future__ import annotations

import re

START_HINT = "start the local servers with `make servers` (or `lakehouse servers start`)"


class LakehouseError(Exception):
    """An error this project raises on purpose; str() is one line naming the cause and the next step."""


class Transient(LakehouseError):
    """Trying again later may succeed."""


class Permanent(LakehouseError):
    """Trying again cannot succeed until someone changes something."""


class ServerUnreachable(Transient):
    """MongoDB or Kafka did not answer; the message names the address and the next step."""


class ServerRefused(Permanent):
    """A server answered but cannot serve us: wrong credentials, or a MongoDB without change streams."""


class NotAReplicaSet(ServerRefused):
    """MongoDB answered, but as a standalone server, which has no change streams."""


class ConfigError(Permanent, ValueError):
    """A setting or option the pipeline cannot use; the message names it (a usage error: exit code 2)."""


# the password of scheme://user:password@host: the user may be empty, and an unescaped @ in the
# password still ends at the last @ before the host's path
_USERINFO = re.compile(r"(//[^:/@\s]*):[^/\s]*@")
_SECRET_OPTIONS = re.compile(r"(?i)((?:password|pwd|secret|AWS_SESSION_TOKEN)[=:])[^&,;\s'\"]+")


def redact(text: str) -> str:
    """`text` with every password of a URI (and secret-looking URI options) replaced by ***."""
    return _SECRET_OPTIONS.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
