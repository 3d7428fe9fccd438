"""The collections' business rules (lakehouse/core/rules.py) that read the row alone (required, one_of,
positive, parses), judged for every change of a micro-batch in the lake query, as Spark expressions:
they run on the executors with the batch, nothing is brought to the driver. The rules that look back
(transitions, references) are judged off that path, over silver's stream (streaming/look_back.py).

Ids are compared in one spelling on both sides: the JSON text Spark gives a parsed value (a document's
reference and silver's doc_id alike), so `"sku-1"` and `{"$oid": "..."}` match however they were spaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from lakehouse.contracts.events import DOCUMENT_OPERATIONS
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.rules import QUALITY_REASON, QualityRule

log = logging.getLogger(__name__)

LOOKING_BACK = ("transitions", "references")  # the rule kinds judged off the lake query's path
VERDICTS = "_verdicts"  # per row, per rule of QualityJudge.ordered: whether it failed; null: not judged
FLAGS = "quality_flags"
REASON = "quarantine_reason"


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
        # The row rules, in the order they are reported in; the others look back (streaming/look_back.py).
        self.rules = tuple(r for r in rules if r.kind not in LOOKING_BACK)
        self.ordered = self.rules

    @property
    def active(self) -> bool:
        return bool(self.rules)

    def judge(self, batch: DataFrame, judgeable: Column | None = None) -> Judged:
        """The verdict of every row rule on every row of `batch` (silver-shaped rows; `judgeable`: which of
        them are change events, the others are not judged)."""
        applies = {r.name: (F.col("collection") == r.collection) & F.col("op").isin(*DOCUMENT_OPERATIONS)
                   & (F.lit(True) if judgeable is None else judgeable) for r in self.rules}
        failed = {rule.name: F.when(applies[rule.name], _row_failure(rule, batch)) for rule in self.rules}
        ordered = self.ordered
        reason = _joined("; ", [F.when(failed[r.name].isNotNull(), F.concat(F.lit(f"{QUALITY_REASON}{r.name}: "),
                                                                            failed[r.name]))
                                for r in ordered if r.severity == "quarantine"])
        flags = _joined(",", [F.when(failed[r.name].isNotNull(), F.lit(r.name))
                              for r in ordered if r.severity != "quarantine"])
        # Verdicts keep one place per rule (null where it does not apply, else whether it failed): counting
        # them by position is compiled code, where filtering an array of (rule, severity, failed) structs by
        # rule name ran a lambda per row and rule (5.7 s of a 100,000-row batch's counting, against 0.5 s);
        # the rule's name and severity, copied into every row, are known by the position.
        verdicts = F.array(*[F.when(applies[r.name], failed[r.name].isNotNull()) for r in ordered])
        judged = batch.withColumns({REASON: reason, FLAGS: flags, VERDICTS: verdicts.cast("array<boolean>")})
        names = F.array(*[F.lit(r.name) for r in ordered])
        severities = F.array(*[F.lit(r.severity) for r in ordered])
        checks = (judged.select("collection", "event_date", F.posexplode(VERDICTS).alias("at", "failed"))
                  .where("failed IS NOT NULL")
                  .groupBy("collection", names[F.col("at")].alias("rule"), severities[F.col("at")].alias("severity"),
                           "event_date")
                  .agg(F.count(F.lit(1)).alias("checked"), F.sum(F.col("failed").cast("long")).alias("failed")))
        return Judged(judged, checks)

    def totals(self) -> list[Column]:
        """Aggregate columns over judged rows: `checked:<rule>` and `failed:<rule>` per rule."""
        out = []
        for at, rule in enumerate(self.ordered):
            verdict = F.col(VERDICTS)[at]
            out += [F.count(verdict).alias(f"checked:{rule.name}"),
                    F.count(F.when(verdict, 1)).alias(f"failed:{rule.name}")]
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
