"""Events about a whole collection or database (drop, rename, dropDatabase, invalidate): which captured
collections they end, as of the event's cluster time, and the record `status` shows of the last one."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from lakehouse.contracts import events
from lakehouse.core.config import Settings
from lakehouse.core.files import write_json_atomically

log = logging.getLogger(__name__)

LIFECYCLE_OPERATIONS = ("drop", "rename", "dropDatabase", "invalidate")


def ended_collections(settings: Settings, change: Mapping[str, Any]) -> tuple[str, ...]:
    """A drop, a rename away or the database dropped ends every document of the captured collections
    concerned."""
    operation, ns = change["operationType"], change.get("ns") or {}
    if operation == "dropDatabase":
        return tuple(settings.collections)
    if ns.get("coll") in settings.collections:
        return (ns["coll"],)
    return ()


def ending_envelopes(settings: Settings, change: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, envelope) of each captured collection the event ends: a snapshot_end with nothing copied
    before it. The event is logged and recorded for `status`."""
    gone = ended_collections(settings, change)
    record(settings, change, gone)
    at = (change["clusterTime"].time, change["clusterTime"].inc)
    return [(settings.topic_for(name), events.collection_ended(settings.mongo_db, name, at, change["_id"]["_data"],
                                                               change["operationType"]))
            for name in gone]


def record(settings: Settings, change: Mapping[str, Any], collections: tuple[str, ...]) -> None:
    """Log a lifecycle event and keep it for `status`."""
    ns = change.get("ns") or {}
    what = {"operation": change["operationType"], "db": ns.get("db"), "collection": ns.get("coll"),
            "to": (change.get("to") or {}).get("coll"), "ended": list(collections),
            "cluster_time": f"{change['clusterTime'].time}.{change['clusterTime'].inc}"
            if change.get("clusterTime") else None,
            "seen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log.warning("lifecycle event %s on %s.%s%s: %s", what["operation"], what["db"], what["collection"],
                f" (to {what['to']})" if what["to"] else "",
                f"every document of {', '.join(collections)} ends in the warehouse" if collections
                else "no captured collection ends")
    write_json_atomically(settings.producer_lifecycle, what)
