"""The captured collections, described once (collections.toml): per collection, the field the Kafka key
comes from, the fields lifted into typed silver and warehouse columns, and whether the money columns
apply. Topics, the silver projection, the warehouse's tables and views, status and reconcile are all
derived from it.

    [orders]
    key = "order_id"                  # Kafka key field; a document without it is keyed by its _id
    table = "orders"                  # warehouse current state (default: the collection's name)
    changes = "fact_order_changes"    # warehouse table of every change (default: fact_<name>_changes)
    money = { amount = "amount", currency = "currency" }   # adds the typed money columns
    [orders.columns]                  # column = "type", or { field = "a.b", type = "..." }
    customer_id = "string"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lakehouse.core.errors import ConfigError
from lakehouse.core.rules import QUALITY_FLAGS, QualityRule, RuleError, parse_rules

# The one type vocabulary (lakehouse/contracts/types.py maps it to Spark SQL, Arrow and DuckDB).
TYPE_NAMES = ("string", "int", "long", "double", "bool", "date", "timestamp")
DECIMAL = re.compile(r"decimal\((\d{1,2}),\s*(\d{1,2})\)")  # decimal(precision, scale), both under 100
# The collections the analytics (enrichment, inventory alerts, sessions) and the generator know by name.
ORDERS, CUSTOMERS, PRODUCTS = "orders", "customers", "products"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_FIELD_PATH = re.compile(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*")
_KEYS = {"key", "table", "changes", "money", "columns", "rules"}
# Columns every collection's silver rows and warehouse tables have: attributes must not take these names.
RESERVED_COLUMNS = frozenset({
    "schema_version", "change_id", "op", "db", "collection", "doc_id", "document_key", "key", "full_document",
    "before_document", "update_description", "cluster_time_s", "cluster_time_inc", "txn_op_index", "txn_number",
    "wall_time_ms", "resume_token", "captured_at_ms", "document_digest", "event_time", "event_date", "extra",
    "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "batch_id", "ingested_at",
    "document", "loaded_at", "last_change_id", "updated_at", "valid_from", "valid_to", "is_tombstone", "is_current",
    "quarantine_reason", "raw_value", QUALITY_FLAGS,
})
# What the money UDF derives from a document's amount and currency fields (streaming/udfs.py).
MONEY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("amount_raw", "string"), ("currency", "string"), ("amount", "decimal(18,2)"), ("amount_currency", "string"),
    ("amount_error", "string"), ("is_high_value", "bool"),
)
DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "collections.toml"


def is_type(name: str) -> bool:
    return name in TYPE_NAMES or bool(DECIMAL.fullmatch(name))


@dataclass(frozen=True)
class Attribute:
    name: str  # the column
    field: str  # the document field it comes from (a dotted path for a nested one)
    type: str  # from TYPE_NAMES, or decimal(p,s)


@dataclass(frozen=True)
class Money:
    amount: str = "amount"  # the document field holding the amount
    currency: str = "currency"  # ... and its currency code


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    key: str = "_id"
    table: str = ""
    changes: str = ""
    money: Money | None = None
    attributes: tuple[Attribute, ...] = ()
    rules: tuple[QualityRule, ...] = ()  # business-rule data quality (lakehouse/core/rules.py)

    @property
    def typed_columns(self) -> tuple[tuple[str, str], ...]:
        """The columns read from its documents: the lifted attributes, then the money columns if they apply."""
        return (*((a.name, a.type) for a in self.attributes), *(MONEY_COLUMNS if self.money else ()))

    @property
    def key_column(self) -> str | None:
        """The warehouse column holding its Kafka key, named after the key field (a.b -> a_b); None when
        the key is the _id, which doc_id already holds."""
        return None if self.key == "_id" else re.sub(r"\W", "_", self.key.replace(".", "_")).lower()

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """Its own columns in silver and the warehouse: the typed ones, then the flags its rules set."""
        return (*self.typed_columns, *(((QUALITY_FLAGS, "string"),) if self.rules else ()))

    @property
    def history(self) -> str:
        return f"{self.table}_history"


@dataclass(frozen=True)
class CollectionsSpec:
    source: str  # the file it came from, for messages
    collections: dict[str, CollectionSpec] = field(default_factory=dict)

    def get(self, name: str) -> CollectionSpec:
        """The spec of `name`; a collection the file does not describe is keyed by _id with no columns."""
        return self.collections.get(name) or _defaults(CollectionSpec(name))

    def silver_columns(self, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """The union of the named collections' columns, each once (their types agree: checked on load)."""
        seen: dict[str, str] = {}
        for name in names:
            for column, kind in self.get(name).columns:
                seen.setdefault(column, kind)
        return tuple(seen.items())


def _defaults(spec: CollectionSpec) -> CollectionSpec:
    table = spec.table or re.sub(r"\W", "_", spec.name.lower())
    changes = spec.changes or f"fact_{table}_changes"
    return CollectionSpec(spec.name, spec.key, table, changes, spec.money, spec.attributes, spec.rules)


class SpecError(ConfigError):
    """collections.toml says something the pipeline cannot do; the message names the file and key."""


@cache
def load_spec(path: Path, mtime_ns: int = 0) -> CollectionsSpec:
    """The spec in `path`, checked (mtime_ns is part of the cache key: an edited file is read again)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"COLLECTIONS_SPEC={path}: no such file; point it at a collections spec such as the "
                        f"repository's collections.toml") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"COLLECTIONS_SPEC={path} cannot be read as TOML: {exc}") from None
    return parse_spec(raw, str(path))


def parse_spec(raw: dict[str, object], source: str = "collections spec") -> CollectionsSpec:
    collections: dict[str, CollectionSpec] = {}
    for name, body in raw.items():
        where = f"{source}: [{name}]"
        if not isinstance(body, dict):
            raise SpecError(f"{where} must be a table of settings (key, table, changes, money, columns, rules)")
        unknown = sorted(set(body) - _KEYS)
        if unknown:
            raise SpecError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
        key = body.get("key", "_id")
        if not isinstance(key, str) or not _FIELD_PATH.fullmatch(key):
            raise SpecError(f"{where}.key = {key!r} is not a field name")
        names = {}
        for setting in ("table", "changes"):
            value = body.get(setting, "")
            if not isinstance(value, str) or (value and not _IDENTIFIER.fullmatch(value)):
                raise SpecError(f"{where}.{setting} = {value!r} is not a table name (lower-case letters, digits, _)")
            names[setting] = value
        spec = CollectionSpec(name, key, names["table"], names["changes"], _money(where, body.get("money")),
                              _attributes(where, body.get("columns", {})))
        _check_key_column(where, spec)
        try:
            rules = parse_rules(where, name, body.get("rules"), {column for column, _ in spec.typed_columns})
        except RuleError as exc:
            raise SpecError(str(exc)) from None
        collections[name] = _defaults(CollectionSpec(name, key, names["table"], names["changes"], spec.money,
                                                     spec.attributes, rules))
    _check_together(source, collections)
    return CollectionsSpec(source, collections)


def _check_key_column(where: str, spec: CollectionSpec) -> None:
    column = spec.key_column
    if column is None:
        return
    if not _IDENTIFIER.fullmatch(column) or column in RESERVED_COLUMNS - {"key"}:
        raise SpecError(f"{where}.key = {spec.key!r} would name the warehouse's key column {column!r}, which is not "
                        "a free column name (lower-case letters, digits, _; not a column every table has)")
    if column in {name for name, _ in spec.typed_columns}:
        raise SpecError(f"{where}.key = {spec.key!r}: the warehouse's key column {column!r} holds it already; "
                        f"remove columns.{column}")


def _money(where: str, value: object) -> Money | None:
    if value is None or value is False:
        return None
    if value is True:
        return Money()
    if not isinstance(value, dict) or set(value) - {"amount", "currency"}:
        raise SpecError(f"{where}.money must be true or {{ amount = \"field\", currency = \"field\" }}, not {value!r}")
    fields = {k: v for k, v in value.items()}
    for k, v in fields.items():
        if not isinstance(v, str) or not _FIELD_PATH.fullmatch(v):
            raise SpecError(f"{where}.money.{k} = {v!r} is not a field name")
    return Money(**fields)


def _attributes(where: str, columns: object) -> tuple[Attribute, ...]:
    if not isinstance(columns, dict):
        raise SpecError(f"{where}.columns must be a table of column = \"type\"")
    out = []
    for column, value in columns.items():
        at = f"{where}.columns.{column}"
        if not _IDENTIFIER.fullmatch(column):
            raise SpecError(f"{at}: {column!r} is not a column name (lower-case letters, digits, _)")
        if column in RESERVED_COLUMNS:
            raise SpecError(f"{at}: {column!r} is a column every table already has; give the attribute another name")
        if isinstance(value, str):
            source, kind = column, value
        elif isinstance(value, dict) and set(value) <= {"field", "type"} and "type" in value:
            source, kind = value.get("field", column), value["type"]
        else:
            raise SpecError(f"{at} must be \"type\" or {{ field = \"a.b\", type = \"type\" }}, not {value!r}")
        if not isinstance(kind, str) or not is_type(kind.replace(" ", "")):
            raise SpecError(f"{at}: type {kind!r} is not one of {', '.join(TYPE_NAMES)}, decimal(p,s)")
        if not isinstance(source, str) or not _FIELD_PATH.fullmatch(source):
            raise SpecError(f"{at}: field {source!r} is not a field name or dotted path")
        out.append(Attribute(column, source, kind.replace(" ", "")))
    return tuple(out)


def _check_together(source: str, collections: dict[str, CollectionSpec]) -> None:
    """Silver holds every collection's columns: one name, one type. Warehouse tables are not shared."""
    types: dict[str, tuple[str, str]] = {}
    tables: dict[str, str] = {}
    rule_names: dict[str, str] = {}
    for spec in collections.values():
        for rule in spec.rules:
            if rule.references and rule.references not in collections:
                raise SpecError(f"{source}: [{spec.name}.rules.{rule.name}] references collection "
                                f"{rule.references!r}, which the spec does not describe; add [{rule.references}]")
            if rule.name in rule_names:
                raise SpecError(f"{source}: rule {rule.name!r} is in [{rule_names[rule.name]}] and [{spec.name}]; "
                                "rule names are unique (they name the quality flags and metrics)")
            rule_names[rule.name] = spec.name
        for column, kind in spec.columns:
            if column in types and types[column][1] != kind:
                other = types[column][0]
                raise SpecError(f"{source}: column {column!r} is {types[column][1]} in [{other}] but {kind} in "
                                f"[{spec.name}]; silver has one column of that name, so give them one type or "
                                "two names")
            types.setdefault(column, (spec.name, kind))
        money_names = {c for c, _ in MONEY_COLUMNS}
        with_money = [s.name for s in collections.values() if s.money]
        clash = [a.name for a in spec.attributes if a.name in money_names]
        if clash and with_money:
            raise SpecError(f"{source}: [{spec.name}].columns.{clash[0]} is one of the money columns "
                            f"[{with_money[0]}] derives (silver has one column of that name); give it another name")
        for table in (spec.table, spec.changes, spec.history):
            if table in tables:
                raise SpecError(f"{source}: [{spec.name}] and [{tables[table]}] both use the warehouse name "
                                f"{table!r}; give one of them another table/changes name")
            tables[table] = spec.name
