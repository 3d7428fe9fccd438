"""Helpers for integration tests: read what reached Kafka, and replay it into a document state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from lakehouse.adapters.kafka import end_offsets
from lakehouse.adapters.mongo import connect as connect_mongo
from lakehouse.contracts.events import STREAMED_OPERATIONS, SourcePosition, canonical_document, doc_id_text, from_change
from lakehouse.core.config import Settings
from producer.listener import ChangeStreamListener


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every message in `topic`, with its Kafka key (kafka_key) and partition."""
    total = sum(end_offsets(settings, [topic]).values())
    if total == 0:
        return []
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=15_000, group_id=None)
    messages = []
    try:
        for record in consumer:
            messages.append({"kafka_key": record.key.decode() if record.key else None, "partition": record.partition,
                             **json.loads(record.value)})
            if len(messages) >= total:
                break
    finally:
        consumer.close()
    return messages


def replay(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Apply change events in source order: doc_id -> canonical document (the warehouse's rule,
    snapshot_end included)."""
    latest: dict[str, dict[str, Any]] = {}
    cutoff = (0, 0)
    for m in messages:
        if m["op"] == "snapshot_end":
            cutoff = max(cutoff, (m["cluster_time_s"], m["cluster_time_inc"]))
            continue
        if m["op"] != "delete" and m["full_document"] is None:
            continue
        order = (m["cluster_time_s"], m["cluster_time_inc"], m["txn_op_index"])
        seen = latest.get(m["doc_id"])
        if seen is None or order > (seen["cluster_time_s"], seen["cluster_time_inc"], seen["txn_op_index"]):
            latest[m["doc_id"]] = m
    return {k: canonical_document(m["full_document"]) for k, m in latest.items()
            if m["op"] != "delete" and (m["cluster_time_s"], m["cluster_time_inc"]) >= cutoff}


def mongo_state(settings: Settings, collection: str = "orders") -> dict[str, str]:
    client = connect_mongo(settings)
    try:
        return {doc_id_text({"_id": d["_id"]}): canonical_document(d)
                for d in client[settings.mongo_db][collection].find()}
    finally:
        client.close()


def witness_change_ids(settings: Settings, start_at: object) -> set[str]:
    """The change_ids of every change MongoDB made to the configured collections since `start_at`, from a
    bare change stream over its own history: the changes that were made."""
    return set(witness_changes(settings, start_at))


def witness_changes(settings: Settings, start_at: object) -> dict[str, tuple[int, int]]:
    """As witness_change_ids, each change_id with its cluster time (seconds, increment)."""
    client = connect_mongo(settings)
    found = {}
    try:
        with client[settings.mongo_db].watch([{"$match": {"ns.coll": {"$in": list(settings.collections)}}}],
                                             start_at_operation_time=start_at, max_await_time_ms=1000) as stream:
            while (change := stream.try_next()) is not None:
                if change["operationType"] in STREAMED_OPERATIONS:
                    found[from_change(change, SourcePosition(0, 0, 0))["change_id"]] = (
                        change["clusterTime"].time, change["clusterTime"].inc)
    finally:
        client.close()
    return found


def start_cli(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Run `lakehouse <args>` as its own process (group, so a kill can take Spark's JVM with it)."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "lakehouse.app.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def drain(settings: Settings, snapshot: str = "initial") -> ChangeStreamListener:
    """Run a producer in this process until its change stream has nothing new."""
    listener = ChangeStreamListener(settings, snapshot_mode=snapshot)
    try:
        listener.run(until_idle=True)
    finally:
        listener.close()
    return listener


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lake_rows(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every row of a lake Delta table ([] before the table exists)."""
    from deltalake import DeltaTable

    path = str(settings.table_path(name))
    return DeltaTable(path).to_pyarrow_table().to_pylist() if DeltaTable.is_deltatable(path) else []


def warehouse_rows(settings: Settings, query: str) -> list[tuple]:
    """A query's rows from the warehouse, opened read-only for it."""
    from warehouse.connection import connect

    con = connect(settings.warehouse_path, read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def stream_lake(spark: object, settings: Settings) -> None:
    """Run the lake query in this process until Kafka is drained (Trigger.AvailableNow), then its copies
    (quarantine, late_events, the Parquet copy, the order lines) until they have caught up."""
    from streaming.job import start, start_copies

    query = start(spark, settings, available_now=True)  # type: ignore[arg-type]
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()
    for copy in start_copies(spark, settings, available_now=True):  # type: ignore[arg-type]
        copy.awaitTermination(300)
        assert copy.exception() is None, copy.exception()
