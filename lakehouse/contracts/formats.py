"""The stored formats of each release, and the one way a file is carried from one format to the next.

Release 1 declared each format the pipeline keeps between runs at version 1, except the change event,
whose `schema_version` is in every record already in Kafka and the lake. Release 2 renamed the event's
Kafka-key field `order_id` to `key`, and the warehouse's key column after the collections spec:

| what | where its version is | release 1 | release 2 (this one) |
|---|---|---|---|
| change event (Kafka value) | `schema_version` field | 2 | 3; v2 still read (contracts/events.py) |
| lake (silver rows) | the event's `schema_version` per row | `order_id` column | `key`; `order_id` still read |
| producer checkpoint | `format_version` in the token file | 1 | 1 |
| warehouse | `format_version` in `warehouse_meta` | 1 | 2; v1 upgraded in place by `load` |

Files of the development builds before release 1 carry no `format_version`. They are refused with the
command that makes them again, not upgraded. A release that changes a format adds one step per version
to that format's `upgrades`: a file is then carried forward one version at a time, in place, by the
stage that writes it, and readers refuse it until then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lakehouse.core.errors import Permanent

FIRST_RELEASE = 1  # what came before it is a development build's
RELEASE = 2
Target = TypeVar("Target")


class OtherFormat(Permanent, RuntimeError):
    """A stored file of a format this release cannot use; the message names it and the command to run."""


@dataclass(frozen=True)
class Format(Generic[Target]):
    """One stored format: its current version, the command that remakes a file of it from upstream, and
    the steps that carry an older version forward (version -> step to version + 1)."""

    what: str
    current: int
    remake: str
    upgrades: Mapping[int, Callable[[Target], None]] = field(default_factory=dict)

    def steps(self, found: int | None, where: str) -> list[Callable[[Target], None]]:
        """The upgrade steps, in order, that carry `where` (of version `found`; None: a development
        build's, before formats were versioned) to the current version; OtherFormat when none can."""
        if found == self.current:
            return []
        if found is None:
            raise OtherFormat(f"{where} is {self.what} of a development build (before release {FIRST_RELEASE}); this "
                              f"release reads format v{self.current}. Make it again with `{self.remake}`")
        if found > self.current:
            raise OtherFormat(f"{where} is {self.what} format v{found}, newer than this release reads "
                              f"(v{self.current}): run a newer release, or make it again with `{self.remake}`")
        chain, version = [], found
        while version < self.current and version in self.upgrades:
            chain.append(self.upgrades[version])
            version += 1
        if version != self.current:
            raise OtherFormat(f"{where} is {self.what} format v{found}, which this release cannot upgrade to "
                              f"v{self.current}. Make it again with `{self.remake}`")
        return chain

    def upgradable(self, found: int | None) -> bool:
        try:
            self.steps(found, "")
        except OtherFormat:
            return False
        return True
