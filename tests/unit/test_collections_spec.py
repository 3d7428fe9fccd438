"""collections.toml: the shipped spec, what each collection becomes, and bad specs refused in one line
naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lakehouse.app.cli import cli
from lakehouse.contracts import tables, types
from lakehouse.core.collections import DEFAULT_SPEC, SpecError, load_spec, parse_spec
from lakehouse.core.config import Settings
from warehouse.schema import WarehouseSchema


def test_the_shipped_spec_captures_orders_customers_and_products() -> None:
    settings = Settings.from_env(collections_spec=DEFAULT_SPEC)
    assert settings.collections == ("orders", "customers", "products")
    orders = settings.collection("orders")
    assert (orders.key, orders.table, orders.changes, orders.history) == ("order_id", "orders", "fact_order_changes",
                                                                           "orders_history")
    assert [n for n, _ in orders.columns] == ["customer_id", "status", "amount_raw", "currency", "amount",
                                              "amount_currency", "amount_error", "is_high_value", "quality_flags"]
    assert [r.name for r in orders.rules] == ["order_required", "known_status", "positive_amount", "amount_present",
                                              "amount_parses", "known_currency", "status_transition",
                                              "customer_exists", "products_exist"]
    customers = settings.collection("customers")
    assert (customers.key, customers.table, customers.changes) == ("_id", "customers", "fact_customers_changes")
    # The key's warehouse column is named by the spec; a collection keyed by _id has none (doc_id is it).
    assert (orders.key_column, customers.key_column) == ("order_id", None)
    assert [n for n, _ in tables.current_columns(orders)][:2] == ["doc_id", "order_id"]
    assert "order_id" not in {n for n, _ in (*tables.current_columns(customers), *tables.changes_columns(customers))}
    nested = parse_spec({"items": {"key": "ref.Code"}}).get("items")
    assert nested.key_column == "ref_code" and ("ref_code", "string") in tables.changes_columns(nested)
    assert customers.columns == (("name", "string"), ("score", "long"), ("segment", "string"), ("country", "string"))
    assert dict(settings.collection("products").columns)["stock"] == "long"
    assert settings.topics == ("cdc.shop.orders", "cdc.shop.customers", "cdc.shop.products")


def test_collections_narrows_the_spec_and_an_undescribed_collection_is_keyed_by_id(tmp_path: Path) -> None:
    settings = Settings.from_env(collections="orders,audit", collections_spec=DEFAULT_SPEC)
    assert settings.collections == ("orders", "audit")
    audit = settings.collection("audit")
    assert (audit.key, audit.table, audit.changes, audit.columns) == ("_id", "audit", "fact_audit_changes", ())


def test_every_table_is_derived_once_from_the_vocabulary() -> None:
    settings = Settings.from_env(collections_spec=DEFAULT_SPEC)
    silver = tables.silver_schema(settings)
    assert silver.field("amount").type == types.arrow("decimal(18,2)")
    assert silver.field("score").type == types.arrow("long")
    schema = WarehouseSchema.of(settings)
    assert set(schema.tables) == {"load_state", "warehouse_meta", "fact_order_changes", "orders",
                                  "fact_customers_changes", "customers", "fact_products_changes", "products"}
    assert {"orders_history", "customers_history", "products_history", "revenue_daily"} <= set(schema.views())
    assert '"score" BIGINT' in next(d for d in schema.ddl() if 'TABLE IF NOT EXISTS "customers" ' in d)


@pytest.mark.parametrize(("text", "says"), [
    ('[orders]\nkey = 5', "[orders].key = 5 is not a field name"),
    ('[orders]\ntabel = "o"', "[orders] has unknown key(s) tabel"),
    ('[orders]\ntable = "Orders; DROP"', "[orders].table = 'Orders; DROP' is not a table name"),
    ('[orders.columns]\nstatus = "text"', "[orders].columns.status: type 'text' is not one of"),
    ('[orders.columns]\ndoc_id = "string"', "'doc_id' is a column every table already has"),
    ('[orders.columns]\n"Bad Name" = "string"', "'Bad Name' is not a column name"),
    ('[orders.columns]\nx = { path = "a" }', "[orders].columns.x must be"),
    ('[orders]\nmoney = "yes"', "[orders].money must be true or"),
    ('[o]\nkey = "doc_id"', "[o].key = 'doc_id' would name the warehouse's key column 'doc_id', which is not a free"),
    ('[o]\nkey = "sku"\n[o.columns]\nsku = "string"', "[o].key = 'sku': the warehouse's key column 'sku' holds it"),
    ('[a.columns]\nx = "long"\n[b.columns]\nx = "string"', "column 'x' is long in [a] but string in [b]"),
    ('[a]\ntable = "t"\n[b]\ntable = "t"', "[b] and [a] both use the warehouse name 't'"),
    ('orders = 3', "[orders] must be a table of settings"),
    ('[a]\nmoney = true\n[b.columns]\namount = "string"', "column 'amount' is decimal(18,2) in [a] but string"),
    ('[a]\nmoney = true\n[b.columns]\ncurrency = "string"', "[b].columns.currency is one of the money columns [a]"),
    ('[o.rules.r]\nkind = "unique"', "[o].rules.r.kind = 'unique'; known kinds: required"),
    ('[o.columns]\ns = "string"\n[o.rules.r]\nkind = "one_of"\ncolumn = "s"\nvalues = ["a"]\nseverity = "drop"',
     "[o].rules.r.severity = 'drop'"),
    ('[o.rules.r]\nkind = "positive"\ncolumn = "amount"', "[o].rules.r reads amount, not a column of [o]"),
    ('[o.rules.r]\nkind = "positive"', "[o].rules.r: a positive rule takes column (got none)"),
    ('[o.rules.r]\nkind = "references"\nfield = "c"\ncollection = "c"\nseverity = "quarantine"',
     "a references rule must have severity \"flag\""),
    ('[o.columns]\ns = "string"\n[o.rules.r]\nkind = "transitions"\ncolumn = "s"\nallowed = { a = ["b"] }\n'
     'severity = "quarantine"', "a transitions rule must have severity \"flag\""),
    ('[o.rules.r]\nkind = "references"\nfield = "c"\ncollection = "customers"',
     "references collection 'customers', which the spec does not describe"),
    ('[o.columns]\ns = "string"\n[o.rules.r]\nkind = "required"\ncolumns = []', "[o].rules.r: the list is empty"),
    ('[o.columns]\ns = "string"\n[o.rules.R]\nkind = "required"\ncolumns = ["s"]', "'R' is not a rule name"),
    ('[o.columns]\ns = "string"\n[o.rules.r]\nkind = "required"\ncolumns = ["s"]\n'
     '[p.columns]\ns = "string"\n[p.rules.r]\nkind = "required"\ncolumns = ["s"]', "rule 'r' is in [o] and [p]"),
])
def test_a_bad_spec_names_the_key(text: str, says: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(__import__("tomllib").loads(text), "spec.toml")
    assert says in str(raised.value)
    assert str(raised.value).startswith("spec.toml")


def test_a_bad_spec_file_is_one_usage_line(tmp_path: Path) -> None:
    spec = tmp_path / "collections.toml"
    spec.write_text('[orders.columns]\nstatus = "text"\n')
    result = CliRunner().invoke(cli, ["status"], env={"COLLECTIONS_SPEC": str(spec), "STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert f"{spec}: [orders].columns.status: type 'text'" in result.output
    assert "Traceback" not in result.output
    spec.write_text("[orders\n")
    result = CliRunner().invoke(cli, ["status"], env={"COLLECTIONS_SPEC": str(spec), "STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2 and "cannot be read as TOML" in result.output, result.output
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(cli, ["status"], env={"COLLECTIONS_SPEC": str(missing)})
    assert result.exit_code == 2 and f"COLLECTIONS_SPEC={missing}: no such file" in result.output, result.output


def test_an_edited_spec_is_read_again(tmp_path: Path) -> None:
    spec = tmp_path / "collections.toml"
    spec.write_text('[orders]\nkey = "order_id"\n')
    assert list(Settings.from_env(collections_spec=spec).collections) == ["orders"]
    spec.write_text('[orders]\nkey = "order_id"\n[items]\n')
    import os

    os.utime(spec, ns=(1, spec.stat().st_mtime_ns + 1_000_000))
    assert list(Settings.from_env(collections_spec=spec).collections) == ["orders", "items"]
    assert load_spec.cache_info().currsize >= 2
