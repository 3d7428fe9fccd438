"""Business-rule data quality, declared in the collections spec next to each collection's columns:

    [orders.rules.order_required]
    kind = "required"                 # required | one_of | positive | parses | transitions | references
    columns = ["customer_id", "status"]
    severity = "quarantine"           # quarantine: kept out of silver (in quarantine with the rule's name)
                                      # flag: kept, the rule's name in the row's quality_flags

Rules read the collection's typed columns (those it lifts, and the money columns), except `references`,
which reads a document field (`items[].sku`: every element's sku). The streaming job judges every change
that carries a document (deletes have none); streaming/quality.py evaluates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lakehouse.core.errors import ConfigError

KINDS = ("required", "one_of", "positive", "parses", "transitions", "references")
SEVERITIES = ("quarantine", "flag")
ANY_STATUS = "*"  # in `allowed`: a move to these values is allowed from any value
QUALITY_FLAGS = "quality_flags"  # the silver/warehouse column naming the flag rules a change broke
QUALITY_REASON = "quality rule "  # how a quarantine reason given by a quality rule begins
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_REFERENCE_PATH = re.compile(r"[A-Za-z0-9_$-]+(\[\])?(\.[A-Za-z0-9_$-]+(\[\])?)*")
_SETTINGS = {
    "required": {"columns"}, "one_of": {"column", "values"}, "positive": {"column"},
    "parses": {"column", "source"}, "transitions": {"column", "allowed"},
    "references": {"field", "collection"},
}


@dataclass(frozen=True)
class QualityRule:
    name: str
    collection: str
    kind: str
    severity: str
    columns: tuple[str, ...] = ()  # required: each must be present and not blank
    column: str = ""  # one_of, positive, parses (the parsed column), transitions
    values: tuple[str, ...] = ()  # one_of: the known values
    source: str = ""  # parses: the raw column; a non-blank raw value whose parse is null fails
    allowed: tuple[tuple[str, tuple[str, ...]], ...] = ()  # transitions: from -> the values it may move to
    field: str = ""  # references: the document field holding the ids (`a[].b` for each element's b)
    references: str = ""  # references: the collection whose live documents' _id they must be

    def read_columns(self) -> tuple[str, ...]:
        """The typed columns the rule reads."""
        return (*self.columns, *filter(None, (self.column, self.source)))

    def next_allowed(self, previous: str) -> frozenset[str]:
        """The values a `transitions` rule lets `previous` move to (staying put is always allowed)."""
        table = dict(self.allowed)
        return frozenset((previous, *table.get(previous, ()), *table.get(ANY_STATUS, ())))


class RuleError(ConfigError):
    """A rule in the collections spec the pipeline cannot evaluate; the message names the file and key."""


def parse_rules(where: str, collection: str, raw: object, columns: set[str]) -> tuple[QualityRule, ...]:
    """The `[<collection>.rules.<name>]` tables of a spec; `columns` are the collection's typed columns."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise RuleError(f"{where}.rules must be a table of rules, [{collection}.rules.<name>]")
    return tuple(_rule(f"{where}.rules.{name}", collection, name, body, columns) for name, body in raw.items())


def _rule(at: str, collection: str, name: str, body: object, columns: set[str]) -> QualityRule:
    if not _NAME.fullmatch(name):
        raise RuleError(f"{at}: {name!r} is not a rule name (lower-case letters, digits, _)")
    if not isinstance(body, dict):
        raise RuleError(f"{at} must be a table: kind = \"...\", severity = \"...\" and the kind's settings")
    kind, severity = body.get("kind"), body.get("severity", "flag")
    if kind not in KINDS:
        raise RuleError(f"{at}.kind = {kind!r}; known kinds: {', '.join(KINDS)}")
    if severity not in SEVERITIES:
        raise RuleError(f"{at}.severity = {severity!r}; one of {', '.join(SEVERITIES)}")
    settings = set(body) - {"kind", "severity"}
    if settings != _SETTINGS[kind]:
        raise RuleError(f"{at}: a {kind} rule takes {', '.join(sorted(_SETTINGS[kind]))} (got "
                        f"{', '.join(sorted(settings)) or 'none'})")
    if kind == "references" and severity != "flag":
        raise RuleError(f"{at}: a references rule must have severity \"flag\": the referenced document may "
                        "arrive later, and a quarantined change could not be taken back when it does")
    if kind == "transitions" and severity != "flag":
        raise RuleError(f"{at}: a transitions rule must have severity \"flag\": it looks back on the document's "
                        "earlier version, so it is judged after the change is in silver (streaming/look_back.py); "
                        "set severity = \"flag\"")
    rule = QualityRule(
        name, collection, kind, severity,
        columns=_strings(at, "columns", body.get("columns", [])),
        column=_string(at, "column", body.get("column", "")),
        values=_strings(at, "values", body.get("values", [])),
        source=_string(at, "source", body.get("source", "")),
        allowed=_allowed(at, body.get("allowed", {})),
        field=_string(at, "field", body.get("field", "")),
        references=_string(at, "collection", body.get("collection", "")),
    )
    unknown = [c for c in rule.read_columns() if c not in columns]
    if unknown:
        raise RuleError(f"{at} reads {', '.join(unknown)}, not a column of [{collection}] (its columns: "
                        f"{', '.join(sorted(columns)) or 'none'}); add it under [{collection}.columns]")
    if kind == "references" and not _REFERENCE_PATH.fullmatch(rule.field):
        raise RuleError(f"{at}.field = {rule.field!r} is not a field path (a.b, or items[].sku for each element)")
    if (kind == "required" and not rule.columns) or (kind == "one_of" and not rule.values):
        raise RuleError(f"{at}: the list is empty")
    return rule


def _string(at: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise RuleError(f"{at}.{key} = {value!r} must be a string")
    return value


def _strings(at: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{at}.{key} = {value!r} must be a list of strings")
    return tuple(value)


def _allowed(at: str, value: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise RuleError(f"{at}.allowed must be a table: from = [\"to\", ...] ({ANY_STATUS!r} for any value)")
    return tuple((source, _strings(f"{at}.allowed", source, targets)) for source, targets in value.items())
