"""The quality rules that look back (`transitions`, `references`), judged off the lake query's path over
silver's Delta stream, with what they need of each document kept in Spark's state store.

Each silver change becomes records keyed by a document: a *version* of its own document (for a collection
with a transitions rule, or one that a references rule points at) and, per references rule, one *request*
per id it refers to (keyed by the referenced document). `applyInPandasWithState` groups them by key; per
key the state is the newest version seen, in source order (its position, operation and the values the
transitions rules read), so the state is bounded by documents, not by changes. Per key and micro-batch:

- versions are taken in source order. A version after the state's is judged by each transitions rule
  against it (nothing is judged after a delete, or without a value on either side) and becomes the state.
  A version at or before the state's (late, or a duplicate) is counted as checked and not judged: the
  version before it is no longer kept.
- requests are answered after the batch's versions: an id whose document is not live (never seen, or
  deleted) dangles. A change without ids is checked and passes.

A `LookBackWriter` appends, once per batch, the failures to `look_back_flags` (change, rule, reason) and
the counts to `quality_checks`. Both rules have severity flag (lakehouse/core/rules.py): a change is in
silver, and may be in the warehouse, before they judge it. The warehouse shows the flags as the view
`look_back_flags`, and re-checks references against its current tables (quality_open_references).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupStateTimeout

from lakehouse.contracts import tables, types
from lakehouse.contracts.events import DOCUMENT_OPERATIONS
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.config import Settings
from lakehouse.core.rules import QualityRule
from streaming.aggregates import start_writer
from streaming.lake_writer import OnceAppender, conform, writer_app_id
from streaming.quality import field_ids, json_key, shown_id

log = logging.getLogger(__name__)

ORDER = tables.SOURCE_ORDER
KINDS = ("transitions", "references")
VERSION, REQUEST = "version", "request"
_MAX_SHOWN = 5  # dangling ids named in a reason
_RECORD_COLUMNS: types.Columns = (
    ("group_collection", "string"), ("group_key", "string"), ("kind", "string"), ("rule", "string"),
    ("change_id", "string"), ("collection", "string"), ("doc_id", "string"), ("key", "string"), ("event_date", "date"),
    ("cluster_time_s", "long"), ("cluster_time_inc", "long"), ("txn_op_index", "long"), ("op", "string"),
    ("values", "string"), ("ref", "string"), ("at", "int"))
_VERDICT_COLUMNS: types.Columns = (
    ("change_id", "string"), ("collection", "string"), ("doc_id", "string"), ("key", "string"),
    ("event_date", "date"), ("rule", "string"), ("failed", "bool"), ("detail", "string"), ("at", "int"))
_STATE_DDL = "cluster_time_s BIGINT, cluster_time_inc BIGINT, txn_op_index BIGINT, op STRING, values STRING"
State = tuple[int, int, int, str, str | None]


def look_back_rules(specs: tuple[CollectionSpec, ...]) -> tuple[QualityRule, ...]:
    """The captured collections' transitions and references rules (a reference to a collection that is
    not captured is not checked: streaming/quality.py says so once)."""
    captured = {spec.name for spec in specs}
    return tuple(r for spec in specs for r in spec.rules
                 if r.kind in KINDS and (r.kind != "references" or r.references in captured))


def judge_key(records: list[dict[str, Any]], state: State | None, rules: tuple[QualityRule, ...]
              ) -> tuple[list[dict[str, Any]], State | None]:
    """One key's records of a micro-batch, given its state: the verdicts (one per version and transitions
    rule, one per request) and the new state. Pure Python, so the rules are tested without Spark."""
    transitions: dict[str, list[QualityRule]] = {}
    for rule in rules:
        if rule.kind == "transitions":
            transitions.setdefault(rule.collection, []).append(rule)
    verdicts: list[dict[str, Any]] = []
    versions = sorted((r for r in records if r["kind"] == VERSION), key=lambda r: tuple(int(r[c]) for c in ORDER))
    for version in versions:
        position = tuple(int(version[c]) for c in ORDER)
        newer = state is None or position > tuple(state[:3])
        values = json.loads(version["values"]) if version.get("values") else {}
        before = json.loads(state[4]) if state is not None and state[4] else {}
        for rule in transitions.get(version["collection"], ()) if version["op"] in DOCUMENT_OPERATIONS else ():
            was, now = before.get(rule.column), values.get(rule.column)
            judged = newer and state is not None and state[3] != "delete" and was is not None and now is not None
            failed = judged and now not in rule.next_allowed(was)
            verdicts.append(_verdict(version, rule.name, failed,
                                     f"{rule.column} moved '{was}' -> '{now}'" if failed else None, 0))
        if newer:
            state = (*position, version["op"], version.get("values"))  # type: ignore[assignment]
    live = state is not None and state[3] != "delete"
    for request in (r for r in records if r["kind"] == REQUEST):
        dangling = request.get("ref") is not None and not live
        verdicts.append(_verdict(request, request["rule"], dangling, request.get("ref") if dangling else None,
                                 int(request.get("at") or 0)))
    return verdicts, state


def _verdict(record: dict[str, Any], rule: str, failed: bool, detail: str | None, at: int) -> dict[str, Any]:
    return {"change_id": record["change_id"], "collection": record["collection"], "doc_id": record["doc_id"],
            "key": record["key"], "event_date": record["event_date"], "rule": rule, "failed": bool(failed),
            "detail": detail, "at": at}


def _state_function(rules: tuple[QualityRule, ...]) -> Any:
    import pandas as pd

    columns = [name for name, _ in _VERDICT_COLUMNS]

    def judge(key: tuple[Any, ...], frames: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        records = [row for frame in frames for row in frame.to_dict("records")]
        found, new_state = judge_key(records, tuple(state.get) if state.exists else None, rules)
        if new_state is not None and (not state.exists or tuple(state.get) != new_state):
            state.update(new_state)
        yield pd.DataFrame(found, columns=columns)

    return judge


def _records(silver: DataFrame, rules: tuple[QualityRule, ...]) -> DataFrame:
    """Silver's changes as the look-back's keyed records (versions and requests)."""
    columns: dict[str, list[str]] = {}
    for rule in rules:
        if rule.kind == "transitions":
            columns.setdefault(rule.collection, []).append(rule.column)
    kept = sorted({*columns, *(r.references for r in rules if r.kind == "references")})
    values: Column = F.lit(None).cast("string")
    for collection, names in columns.items():
        values = F.when(F.col("collection") == collection, F.to_json(F.struct(*sorted(set(names))))).otherwise(values)
    common = ["change_id", "collection", "doc_id", "key", "event_date", *ORDER, "op"]
    versions = silver.where(F.col("collection").isin(*kept)).select(
        F.col("collection").alias("group_collection"), json_key(F.col("doc_id")).alias("group_key"),
        F.lit(VERSION).alias("kind"), F.lit(None).cast("string").alias("rule"), *common, values.alias("values"),
        F.lit(None).cast("string").alias("ref"), F.lit(0).alias("at"))
    parts = [versions]
    for rule in (r for r in rules if r.kind == "references"):
        asking = silver.where((F.col("collection") == rule.collection) & F.col("op").isin(*DOCUMENT_OPERATIONS))
        ids = field_ids(F.col("full_document"), rule.field)
        asked = asking.select(*common, F.posexplode_outer(ids).alias("at", "ref"))
        parts.append(asked.select(
            F.lit(rule.references).alias("group_collection"), F.col("ref").alias("group_key"),
            F.lit(REQUEST).alias("kind"), F.lit(rule.name).alias("rule"), *common,
            F.lit(None).cast("string").alias("values"), "ref", F.coalesce(F.col("at"), F.lit(0)).alias("at")))
    records = parts[0]
    for part in parts[1:]:
        records = records.unionByName(part)
    return conform(records, _RECORD_COLUMNS)


class LookBackWriter:
    """foreachBatch of the look-back query: per change and rule one verdict; the failures appended to
    look_back_flags, the counts to quality_checks, each once per batch."""

    def __init__(self, settings: Settings, rules: tuple[QualityRule, ...], checkpoint: Path) -> None:
        self.flags = settings.table_path(tables.LOOK_BACK_FLAGS)
        self.checks = settings.table_path(tables.QUALITY_CHECKS)
        self.rules = rules
        self.appender = OnceAppender(writer_app_id(checkpoint))

    def _reason(self) -> Column:
        reason: Column = F.lit(None).cast("string")
        for rule in self.rules:
            if rule.kind == "transitions":
                text = F.col("details")[0]["detail"]
            else:
                shown = F.transform(F.slice("details", 1, _MAX_SHOWN), lambda d: shown_id(d["detail"]))
                text = F.concat(F.lit(f"{rule.field} "), F.array_join(shown, ", "), F.lit(f" not in {rule.references}"))
            reason = F.when(F.col("rule") == rule.name, text).otherwise(reason)
        return reason

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        verdicts = batch_df.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            per_change = verdicts.groupBy("change_id", "collection", "doc_id", "key", "event_date", "rule").agg(
                F.max(F.col("failed").cast("int")).alias("failed"),
                F.sort_array(F.collect_list(F.when(F.col("failed"), F.struct("at", "detail")))).alias("details")
            ).persist(StorageLevel.MEMORY_AND_DISK)
            try:
                severity: Column = F.lit(None).cast("string")
                for rule in self.rules:
                    severity = F.when(F.col("rule") == rule.name, F.lit(rule.severity)).otherwise(severity)
                written = {"batch_id": F.lit(batch_id).cast("long"), "ingested_at": F.current_timestamp()}
                checks = (per_change.groupBy("collection", "rule", "event_date")
                          .agg(F.count(F.lit(1)).alias("checked"), F.sum("failed").alias("failed"))
                          .withColumns({"severity": severity, **written}))
                if checks.isEmpty():
                    return
                flags = per_change.where(F.col("failed") == 1).withColumns({"reason": self._reason(), **written})
                self.appender.append(conform(flags, tables.LOOK_BACK_FLAGS_COLUMNS), self.flags, batch_id)
                self.appender.append(conform(checks, tables.QUALITY_CHECKS_COLUMNS), self.checks, batch_id)
            finally:
                per_change.unpersist()
        finally:
            verdicts.unpersist()


def checkpoint(settings: Settings) -> Path:
    return settings.query_checkpoint(tables.LOOK_BACK_FLAGS)


def start_look_back(silver: DataFrame, settings: Settings, available_now: bool) -> list[Any]:
    """The look-back query over silver's stream; none when no captured collection has such a rule."""
    rules = look_back_rules(tuple(map(settings.collection, settings.collections)))
    if not rules:
        return []
    verdicts = _records(silver, rules).groupBy("group_collection", "group_key").applyInPandasWithState(
        _state_function(rules), types.spark_ddl(_VERDICT_COLUMNS), _STATE_DDL, "append",
        GroupStateTimeout.NoTimeout)
    return [start_writer(verdicts, LookBackWriter(settings, rules, checkpoint(settings)), checkpoint(settings),
                         tables.LOOK_BACK_FLAGS, settings, available_now)]
