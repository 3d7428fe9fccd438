"""The collections' business rules (lakehouse/core/rules.py), judged for every change of a micro-batch.

Row rules (required, one_of, positive, parses) read the row alone. Two need what came before:
- `transitions` judges a value against the document's previous version in source order, whichever batch
  brought it, late or twice (a duplicate is never its own previous version);
- `references` looks the ids up among the referenced collection's live documents in the lake, this
  batch's changes included.
Both read that state from silver once, all of it, and keep it up to date from what each batch writes to
silver. A batch Spark replays after a crash may find its own rows there already: that changes no verdict
(a change's copy is never its previous version, and the batch's own rows count anyway), and a replay
into an existing lake under a new checkpoint (whose batch ids start again at 0) sees the whole lake.
The memory it takes is a few columns per change of the collections with a transitions rule, and the ids
of the referenced collections.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.adapters.delta import LakeTable
from lakehouse.contracts import tables
from lakehouse.contracts.events import DOCUMENT_OPERATIONS, identity_of
from lakehouse.core.collections import CollectionSpec
from lakehouse.core.rules import QUALITY_REASON, QualityRule

log = logging.getLogger(__name__)

ORDER = tables.SOURCE_ORDER


@dataclass
class Verdict:
    """Per row of the judged table: why it is quarantined (null: kept) and the flag rules it broke (null:
    none); per (collection, rule, event day): changes checked and failed."""

    quarantine_reason: pa.Array
    flags: pa.Array
    counts: dict[tuple[str, str, str, Any], list[int]] = field(default_factory=dict)

    def totals(self) -> dict[str, list[int]]:
        """rule -> [checked, failed] over the batch."""
        out: dict[str, list[int]] = {}
        for (_, rule, _, _), (checked, failed) in self.counts.items():
            total = out.setdefault(rule, [0, 0])
            total[0] += checked
            total[1] += failed
        return out


class QualityJudge:
    def __init__(self, specs: tuple[CollectionSpec, ...], silver_path: Path) -> None:
        self.rules = tuple(rule for spec in specs for rule in spec.rules)
        self.silver_path = silver_path
        captured = {spec.name for spec in specs}
        for rule in self.rules:
            if rule.references and rule.references not in captured:
                log.warning("quality rule %s references %s, which is not captured (COLLECTIONS): it is not checked",
                            rule.name, rule.references)
        self.rules = tuple(r for r in self.rules if not r.references or r.references in captured)
        self._transition_columns: dict[str, tuple[str, ...]] = {}
        for rule in self.rules:
            if rule.kind == "transitions":
                known = self._transition_columns.get(rule.collection, ())
                self._transition_columns[rule.collection] = tuple(dict.fromkeys((*known, rule.column)))
        self._referenced = {rule.references for rule in self.rules if rule.kind == "references"}
        self._versions: dict[tuple[str, str], list[tuple[tuple[int, int, int], str, dict[str, Any]]]] | None = None
        self._live: dict[str, dict[str, tuple[tuple[int, int, int], bool]]] = {}

    @property
    def active(self) -> bool:
        return bool(self.rules)

    # -- state -------------------------------------------------------------------------------------
    def _load(self) -> None:
        """The state as silver holds it."""
        self._versions = defaultdict(list)
        self._live = {name: {} for name in self._referenced}
        wanted = set(self._transition_columns) | self._referenced
        table = LakeTable.open(self.silver_path) if wanted else None
        if table is None:
            return
        names = set(table.arrow_schema().names)
        value_columns = {c for cols in self._transition_columns.values() for c in cols if c in names}
        rows = table.read(["collection", "op", "doc_id", *ORDER, *sorted(value_columns)])
        rows = rows.filter(pc.is_in(rows["collection"], pa.array(sorted(wanted))))
        self.remember(rows)
        log.info("quality rules: state of %d earlier changes read from silver", rows.num_rows)

    def remember(self, silver: pa.Table) -> None:
        """Take in the rows a batch wrote to silver."""
        if self._versions is None:
            return
        for row in _rows(silver, ["collection", "op", "doc_id", *ORDER],
                         {c for cols in self._transition_columns.values() for c in cols}):
            collection, doc_id, order = row["collection"], row["doc_id"], _order(row)
            if collection in self._transition_columns:
                values = {c: row.get(c) for c in self._transition_columns[collection]}
                versions = self._versions[(collection, doc_id)]
                if not any(o == order for o, _, _ in versions):
                    versions.append((order, row["op"], values))
                    versions.sort(key=lambda v: v[0])
            if collection in self._live:
                known = self._live[collection].get(doc_id)
                if known is None or known[0] < order:
                    self._live[collection][doc_id] = (order, row["op"] != "delete")

    # -- judging -----------------------------------------------------------------------------------
    def judge(self, silver: pa.Table, batch_id: int) -> Verdict:
        """The verdict on every row of `silver` (the batch's rows that parsed), in its order."""
        if self._versions is None:
            self._load()
        n = silver.num_rows
        reasons: list[list[str]] = [[] for _ in range(n)]
        flags: list[list[str]] = [[] for _ in range(n)]
        counts: dict[tuple[str, str, str, Any], list[int]] = {}
        if not self.rules or n == 0:
            return Verdict(pa.nulls(n, pa.string()), pa.nulls(n, pa.string()), counts)
        self._take_references(silver)
        columns = {c for r in self.rules for c in r.read_columns()}
        rows = list(_rows(silver, ["collection", "op", "doc_id", "change_id", "full_document", "event_date", *ORDER],
                          columns))
        row_rules = [r for r in self.rules if r.kind not in ("transitions",)]
        for i, row in enumerate(rows):
            if row["op"] not in DOCUMENT_OPERATIONS:
                continue
            for rule in row_rules:
                if rule.collection == row["collection"]:
                    self._count(counts, rule, row, reasons[i], flags[i], _judge_row(rule, row, self._live))
        # Transitions: against the previous version, among earlier batches and this batch's kept rows.
        for rule in (r for r in self.rules if r.kind == "transitions"):
            mine = [i for i, row in enumerate(rows) if row["collection"] == rule.collection]
            batch_versions: dict[str, list[tuple[tuple[int, int, int], str, dict[str, Any]]]] = defaultdict(list)
            for i in mine:
                if not reasons[i]:
                    batch_versions[rows[i]["doc_id"]].append((_order(rows[i]), rows[i]["op"], rows[i]))
            for i in mine:
                row = rows[i]
                if row["op"] not in DOCUMENT_OPERATIONS:
                    continue
                previous = _previous(_order(row), self._versions.get((rule.collection, row["doc_id"]), []),
                                     batch_versions.get(row["doc_id"], []))
                self._count(counts, rule, row, reasons[i], flags[i], _judge_transition(rule, row, previous))
        return Verdict(pa.array(["; ".join(r) or None for r in reasons], pa.string()),
                       pa.array([",".join(f) or None for f in flags], pa.string()), counts)

    @staticmethod
    def _count(counts: dict[tuple[str, str, str, Any], list[int]], rule: QualityRule, row: dict[str, Any],
               reasons: list[str], flags: list[str], failure: str | None) -> None:
        tally = counts.setdefault((rule.collection, rule.name, rule.severity, row["event_date"]), [0, 0])
        tally[0] += 1
        if failure is None:
            return
        tally[1] += 1
        if rule.severity == "quarantine":
            reasons.append(f"{QUALITY_REASON}{rule.name}: {failure}")
        else:
            flags.append(rule.name)

    def _take_references(self, silver: pa.Table) -> None:
        """This batch's changes of referenced collections count as the lake's state for its own rows."""
        if not self._referenced:
            return
        mine = silver.filter(pc.is_in(silver["collection"], pa.array(sorted(self._referenced))))
        for row in _rows(mine, ["collection", "op", "doc_id", *ORDER], set()):
            known = self._live[row["collection"]].get(row["doc_id"])
            if known is None or known[0] < _order(row):
                self._live[row["collection"]][row["doc_id"]] = (_order(row), row["op"] != "delete")


def _rows(table: pa.Table, always: list[str], optional: set[str]) -> Iterator[dict[str, Any]]:
    names = [c for c in dict.fromkeys((*always, *sorted(optional))) if c in table.column_names]
    return iter(table.select(names).to_pylist())


def _order(row: dict[str, Any]) -> tuple[int, int, int]:
    return (row["cluster_time_s"] or 0, row["cluster_time_inc"] or 0, row["txn_op_index"] or 0)


def _previous(order: tuple[int, int, int], *version_lists: list[tuple[tuple[int, int, int], str, Any]]
              ) -> tuple[str, Any] | None:
    """(op, values) of the newest version strictly before `order` (so never a copy of the change itself)."""
    best: tuple[tuple[int, int, int], str, Any] | None = None
    for versions in version_lists:
        for version in versions:
            if version[0] < order and (best is None or version[0] > best[0]):
                best = version
    return None if best is None else (best[1], best[2])


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _judge_row(rule: QualityRule, row: dict[str, Any], live: dict[str, dict[str, Any]]) -> str | None:
    """Why the row breaks the rule, or None."""
    if rule.kind == "required":
        missing = [c for c in rule.columns if _blank(row.get(c))]
        return f"{', '.join(missing)} missing" if missing else None
    value = row.get(rule.column)
    if rule.kind == "one_of":
        return None if value is None or value in rule.values else f"{rule.column} {value!r} is not one of " \
                                                                  f"{', '.join(rule.values)}"
    if rule.kind == "positive":
        return None if value is None or value > 0 else f"{rule.column} {value} is not positive"
    if rule.kind == "parses":
        raw = row.get(rule.source)
        return None if value is not None or _blank(raw) else f"{rule.source} {raw!r} does not parse as {rule.column}"
    if rule.kind == "references":
        ids = list(_field_values(row.get("full_document"), rule.field))
        known = live.get(rule.references, {})
        dangling = [v for v in ids if not known.get(identity_of(v), (None, False))[1]]
        return (f"{rule.field} {', '.join(map(str, dangling[:5]))} not in {rule.references}" if dangling else None)
    raise AssertionError(rule.kind)


def _judge_transition(rule: QualityRule, row: dict[str, Any], previous: tuple[str, Any] | None) -> str | None:
    if previous is None or previous[0] == "delete":
        return None
    before, now = previous[1].get(rule.column), row.get(rule.column)
    if before is None or now is None or now in rule.next_allowed(before):
        return None
    return f"{rule.column} moved {before!r} -> {now!r}"


def _field_values(document: str | None, path: str) -> Iterator[Any]:
    """The values at `path` in a document's JSON text; `a[].b` walks every element of the list a."""
    if not document:
        return
    try:
        values: list[Any] = [json.loads(document)]
    except ValueError:
        return
    for step in path.split("."):
        each = step.endswith("[]")
        name = step[:-2] if each else step
        found: list[Any] = []
        for value in values:
            if isinstance(value, dict) and name in value:
                inner = value[name]
                if each:
                    found.extend(inner if isinstance(inner, list) else [])
                else:
                    found.append(inner)
        values = found
    yield from (v for v in values if v is not None)
