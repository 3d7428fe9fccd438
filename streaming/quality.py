"""The collections' business rules (lakehouse/core/rules.py), judged for every change of a micro-batch, as
Spark expressions and joins: they run on the executors with the batch, nothing is brought to the driver.

Row rules (required, one_of, positive, parses) read the row alone. Two need what came before:
- `transitions` judges a value against the document's previous version in source order, whichever batch
  brought it, late or twice (a duplicate is never its own previous version);
- `references` looks the ids up among the referenced collection's live documents in the lake, this
  batch's changes included.
Both read that state from silver (the Delta table) for each batch, restricted to what the batch needs. A
batch Spark replays after a crash may find its own rows there already: that changes no verdict (a
change's copy is never its previous version, and the batch's own rows count anyway), and a replay into
an existing lake under a new checkpoint sees the whole lake.

Ids are compared in one spelling on both sides: the JSON text Spark gives a parsed value (a document's
reference and silver's doc_id alike), so `"sku-1"` and `{"$oid": "..."}` match however they were spaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from lakehouse.contracts import tables
from lakehouse.contracts.events import DOCUMENT_OPERATIONS
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.rules import ANY_STATUS, QUALITY_REASON, QualityRule

log = logging.getLogger(__name__)

ORDER = tables.SOURCE_ORDER
ROW = "_row"  # a unique id per row of the judged batch (the caller's persisted DataFrame)
VERDICTS = "_verdicts"  # per row, per rule of QualityJudge.ordered: (rule, severity, failed); null: not judged
FLAGS = "quality_flags"
REASON = "quarantine_reason"
_MAX_SHOWN = 5  # dangling ids named in a reason


def json_key(value: Column) -> Column:
    """One spelling of a JSON value's text (its compact form), to join ids from documents and doc_ids."""
    return F.to_json(F.try_parse_json(value))


def field_ids(document: Column, path: str) -> Column:
    """The values at `path` in a document's JSON text, each as JSON text (`a[].b`: each element's b);
    an empty array where there are none."""
    steps = path.split(".")
    values = F.array(F.try_parse_json(document))
    for step in steps:
        each, name = step.endswith("[]"), step.removesuffix("[]")
        picked = F.transform(values, _getter(name))
        if each:
            picked = F.flatten(F.transform(picked, lambda v: F.coalesce(
                F.try_variant_get(v, "$", "array<variant>"), F.array().cast("array<variant>"))))
        values = F.filter(picked, lambda v: v.isNotNull() & ~F.is_variant_null(v))
    return F.transform(values, lambda v: F.to_json(v))


def _getter(name: str) -> Callable[[Column], Column]:
    """A one-argument function for F.transform (a lambda with a default argument would get the index)."""
    return lambda v: F.try_variant_get(v, f"$['{name}']", "variant")


def shown_id(json_text: Column) -> Column:
    """An id as a reason shows it: a string as itself, any other value as its JSON."""
    return F.coalesce(F.get_json_object(F.concat(F.lit('{"v":'), json_text, F.lit("}")), "$.v"), json_text)


@dataclass(frozen=True)
class Judged:
    """The batch with `quarantine_reason` and `quality_flags` set, and its rows of the quality_checks
    table (without batch_id and ingested_at)."""

    rows: DataFrame
    checks: DataFrame


class QualityJudge:
    def __init__(self, specs: tuple[CollectionSpec, ...]) -> None:
        captured = {spec.name for spec in specs}
        rules = tuple(rule for spec in specs for rule in spec.rules)
        for rule in rules:
            if rule.references and rule.references not in captured:
                log.warning("quality rule %s references %s, which is not captured (COLLECTIONS): it is not checked",
                            rule.name, rule.references)
        self.rules = tuple(r for r in rules if not r.references or r.references in captured)
        # The order rules are reported in: transitions last (they read what the other rules kept).
        self.ordered = (*(r for r in self.rules if r.kind != "transitions"),
                        *(r for r in self.rules if r.kind == "transitions"))

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def judge(self, batch: DataFrame, history: Callable[[], DataFrame | None]) -> Judged:
        """The verdict on every row of `batch` (the batch's parsed rows, silver-shaped, with a unique ROW
        column); `history()` gives silver as the lake holds it (None while there is none)."""
        applies = {r.name: (F.col("collection") == r.collection) & F.col("op").isin(*DOCUMENT_OPERATIONS)
                   for r in self.rules}
        judged = batch
        failures: dict[str, Column] = {}
        row_rules = [r for r in self.rules if r.kind not in ("transitions", "references")]
        for rule in row_rules:
            failures[rule.name] = _row_failure(rule, batch)
        references = [r for r in self.rules if r.kind == "references"]
        if references:
            judged = _with_dangling(judged, references, history)
            for rule in references:
                dangling = F.col(f"_dangling_{rule.name}")
                failures[rule.name] = F.when(F.size(dangling) > 0, F.concat(
                    F.lit(f"{rule.field} "), F.array_join(F.slice(F.transform(dangling, shown_id), 1, _MAX_SHOWN),
                                                          ", "), F.lit(f" not in {rule.references}")))
        transitions = [r for r in self.rules if r.kind == "transitions"]
        if transitions:
            # The batch's versions that count as previous ones: rows no row rule quarantines.
            kept = _joined(" ", [F.when(applies[r.name] & failures[r.name].isNotNull(), F.lit("x"))
                                 for r in row_rules if r.severity == "quarantine"]).isNull()
            judged = _with_previous(judged, transitions, kept, history)
            for rule in transitions:
                failures[rule.name] = _transition_failure(rule)
        failed = {name: F.when(applies[name], failure) for name, failure in failures.items()}
        ordered = self.ordered
        reason = _joined("; ", [F.when(failed[r.name].isNotNull(), F.concat(F.lit(f"{QUALITY_REASON}{r.name}: "),
                                                                            failed[r.name]))
                                for r in ordered if r.severity == "quarantine"])
        flags = _joined(",", [F.when(failed[r.name].isNotNull(), F.lit(r.name))
                              for r in ordered if r.severity != "quarantine"])
        verdicts = F.array(*[F.when(applies[r.name], F.struct(
            F.lit(r.name).alias("rule"), F.lit(r.severity).alias("severity"),
            failed[r.name].isNotNull().alias("failed"))) for r in ordered]) if ordered else F.array()
        helper = [c for c in judged.columns if c.startswith("_dangling_") or c.startswith("_previous_")]
        # Verdicts keep one place per rule (null where it does not apply): counting them by position is
        # compiled code, where filtering the array by rule name ran a lambda per row and rule (5.7 s of a
        # 100,000-row batch's counting, against 0.5 s).
        judged = judged.withColumns({REASON: reason, FLAGS: flags, VERDICTS: verdicts}).drop(*helper)
        checks = (judged.select("collection", "event_date", F.explode(VERDICTS).alias("v")).where("v IS NOT NULL")
                  .groupBy("collection", F.col("v.rule").alias("rule"), F.col("v.severity").alias("severity"),
                           "event_date")
                  .agg(F.count(F.lit(1)).alias("checked"), F.sum(F.col("v.failed").cast("long")).alias("failed")))
        return Judged(judged, checks)

    def totals(self) -> list[Column]:
        """Aggregate columns over judged rows: `checked:<rule>` and `failed:<rule>` per rule."""
        out = []
        for at, rule in enumerate(self.ordered):
            verdict = F.col(VERDICTS)[at]
            out += [F.count(verdict).alias(f"checked:{rule.name}"),
                    F.count(F.when(verdict["failed"], 1)).alias(f"failed:{rule.name}")]
        return out


def _joined(separator: str, parts: list[Column]) -> Column:
    """The non-null parts joined; null when there are none."""
    if not parts:
        return F.lit(None).cast(StringType())
    text = F.concat_ws(separator, *parts)
    return F.when(text != "", text)


def _blank(batch: DataFrame, column: str) -> Column:
    value = F.col(column)
    if isinstance(batch.schema[column].dataType, StringType):
        return value.isNull() | (F.trim(value) == "")
    return value.isNull()


def _shown(batch: DataFrame, column: str) -> Column:
    """A value as Python's repr shows it in a reason: a string quoted, anything else as itself."""
    value = F.col(column).cast("string")
    return F.concat(F.lit("'"), value, F.lit("'")) if isinstance(batch.schema[column].dataType, StringType) else value


def _row_failure(rule: QualityRule, batch: DataFrame) -> Column:
    """Why a row breaks a row rule (null: it does not)."""
    if rule.kind == "required":
        missing = _joined(", ", [F.when(_blank(batch, c), F.lit(c)) for c in rule.columns])
        return F.when(missing.isNotNull(), F.concat(missing, F.lit(" missing")))
    value = F.col(rule.column)
    if rule.kind == "one_of":
        return F.when(value.isNotNull() & ~value.isin(*rule.values), F.concat(
            F.lit(f"{rule.column} "), _shown(batch, rule.column), F.lit(f" is not one of {', '.join(rule.values)}")))
    if rule.kind == "positive":
        return F.when(value.isNotNull() & (value <= 0),
                      F.concat(F.lit(f"{rule.column} "), value.cast("string"), F.lit(" is not positive")))
    if rule.kind == "parses":
        return F.when(value.isNull() & ~_blank(batch, rule.source), F.concat(
            F.lit(f"{rule.source} "), _shown(batch, rule.source), F.lit(f" does not parse as {rule.column}")))
    raise AssertionError(rule.kind)


def _latest(rows: DataFrame, keys: list[str]) -> DataFrame:
    """The newest row per `keys` in source order."""
    newest = Window.partitionBy(*keys).orderBy(*(F.col(c).desc() for c in ORDER))
    return rows.withColumn("_n", F.row_number().over(newest)).where("_n = 1").drop("_n")


def _with_dangling(batch: DataFrame, rules: list[QualityRule], history: Callable[[], DataFrame | None]
                   ) -> DataFrame:
    """A `_dangling_<rule>` column per references rule: the referenced ids that are not live documents of
    the referenced collection (silver and this batch, newest version in source order)."""
    referenced = sorted({r.references for r in rules})
    versions = batch.where(F.col("collection").isin(*referenced)).select("collection", "doc_id", "op", *ORDER)
    silver = history()
    if silver is not None:
        versions = versions.unionByName(silver.where(F.col("collection").isin(*referenced))
                                        .select("collection", "doc_id", "op", *ORDER))
    live = (_latest(versions.withColumn("_key", json_key(F.col("doc_id"))), ["collection", "_key"])
            .where(F.col("op") != "delete").select(F.col("collection").alias("_referenced"), "_key"))
    judged = batch
    for rule in rules:
        applies = (F.col("collection") == rule.collection) & F.col("op").isin(*DOCUMENT_OPERATIONS)
        ids = (batch.where(applies).select(ROW, F.posexplode(field_ids(F.col("full_document"), rule.field))
                                           .alias("_at", "_key"))
               .withColumn("_referenced", F.lit(rule.references)))
        dangling = (ids.join(F.broadcast(live), ["_referenced", "_key"], "left_anti")
                    .groupBy(ROW).agg(F.sort_array(F.collect_list(F.struct("_at", "_key"))).alias("_found"))
                    .select(ROW, F.transform("_found", lambda s: s["_key"]).alias(f"_dangling_{rule.name}")))
        judged = judged.join(dangling, ROW, "left").withColumn(
            f"_dangling_{rule.name}", F.coalesce(f"_dangling_{rule.name}", F.array().cast("array<string>")))
    return judged


def _with_previous(batch: DataFrame, rules: list[QualityRule], kept: Column,
                   history: Callable[[], DataFrame | None]) -> DataFrame:
    """`_previous_op` and `_previous_<column>` per row: the document's newest version strictly before the
    row in source order, among silver and the batch's kept rows."""
    judged = batch
    for collection in sorted({r.collection for r in rules}):
        columns = sorted({r.column for r in rules if r.collection == collection})
        mine = F.col("collection") == collection
        own = batch.where(mine)
        versions = own.where(kept).select("doc_id", "op", *ORDER, *columns)
        silver = history()
        if silver is not None:
            wanted = own.select("doc_id").distinct()
            versions = versions.unionByName(silver.where(mine).join(F.broadcast(wanted), "doc_id", "left_semi")
                                            .select("doc_id", "op", *ORDER, *columns))
        # Each row against every version of its document before it; the newest of those is the previous one.
        candidates = (own.select(ROW, "doc_id", *(F.col(c).alias(f"_at_{c}") for c in ORDER))
                      .join(versions.dropDuplicates(["doc_id", *ORDER]), "doc_id")
                      .where(_before(ORDER)))
        newest = Window.partitionBy(ROW).orderBy(*(F.col(c).desc() for c in ORDER))
        found = (candidates.withColumn("_n", F.row_number().over(newest)).where("_n = 1")
                 .select(ROW, F.col("op").alias(f"_previous_op_{collection}"),
                         *(F.col(c).alias(f"_previous_{collection}_{c}") for c in columns)))
        judged = judged.join(found, ROW, "left")
    return judged


def _before(order: tuple[str, ...]) -> Column:
    """The candidate version's source position is strictly before the row's (`_at_*`)."""
    condition = F.lit(False)
    for i in reversed(range(len(order))):
        equal_before = F.lit(True)
        for c in order[:i]:
            equal_before = equal_before & (F.col(c) == F.col(f"_at_{c}"))
        condition = (equal_before & (F.col(order[i]) < F.col(f"_at_{order[i]}"))) | condition
    return condition


def _transition_failure(rule: QualityRule) -> Column:
    before = F.col(f"_previous_{rule.collection}_{rule.column}")
    previous_op = F.col(f"_previous_op_{rule.collection}")
    now = F.col(rule.column)
    table = dict(rule.allowed)
    allowed = (now == before) | now.isin(*table.get(ANY_STATUS, ()))
    for source, targets in table.items():
        if source != ANY_STATUS:
            allowed = allowed | ((before == source) & now.isin(*targets))
    judged = previous_op.isNotNull() & (previous_op != "delete") & before.isNotNull() & now.isNotNull()
    return F.when(judged & ~allowed, F.concat(F.lit(f"{rule.column} moved '"), before, F.lit("' -> '"), now,
                                              F.lit("'")))
