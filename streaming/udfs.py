"""Vectorised (pandas / Arrow) UDFs over streaming/amounts.py's rules, and the high-value rule in Spark SQL.

Vectorised rather than plain Python UDFs: rows cross the JVM/Python boundary in Arrow batches instead
of one pickled row at a time; the per-value rule itself is the same Python function either way.
The UDFs are made when a query is built (pandas_udf needs a running session to read its types).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from streaming.amounts import is_high_value, money_from_document, parse_thresholds

MONEY_FIELDS = ("amount_raw", "currency", "amount", "amount_currency", "amount_error")
MONEY_TYPE = ("amount_raw STRING, currency STRING, amount DECIMAL(18, 2), amount_currency STRING, "
              "amount_error STRING")


def parse_money(document: pd.Series, amount_field: pd.Series, currency_field: pd.Series) -> pd.DataFrame:
    """The document's JSON text and the collection's amount and currency fields -> (amount's source text,
    currency field, amount, its currency, error); all null for a collection without money (no fields)."""
    rows = []
    for text, amount_at, currency_at in zip(document, amount_field, currency_field, strict=True):
        if amount_at is None:
            rows.append((None, None, None, None, None))
            continue
        raw, currency, parsed = money_from_document(text, amount_at, currency_at)
        rows.append((raw, currency, parsed.value, parsed.currency, parsed.error))
    return pd.DataFrame(rows, columns=list(MONEY_FIELDS))


def high_values(thresholds_spec: str):  # noqa: ANN201 - returns the pandas function for the UDF
    thresholds = parse_thresholds(thresholds_spec)

    def flags(amount: pd.Series, currency: pd.Series) -> pd.Series:
        return pd.Series([is_high_value(a, c, thresholds) for a, c in zip(amount, currency, strict=True)],
                         dtype="boolean")

    return flags


def high_value_sql(amount: Column, currency: Column, thresholds_spec: str) -> Column:
    """is_high_value's rule (streaming/amounts.is_high_value) in Spark SQL functions: the amount at or above
    its currency's threshold, else the default's; null when the amount or a threshold is unknown.
    bench/udf_bench.py measures it against the pandas UDF (`high_values`); the job uses this one."""
    thresholds = parse_thresholds(thresholds_spec)
    limits = F.create_map(*(v for code, limit in thresholds.items()
                            for v in (F.lit(code), F.lit(limit).cast("decimal(20, 2)"))))
    default = thresholds.get("DEFAULT")
    limit = F.element_at(limits, F.upper(F.coalesce(currency, F.lit(""))))
    if default is not None:
        limit = F.coalesce(limit, F.lit(default).cast("decimal(20, 2)"))
    return F.when(amount.isNotNull() & limit.isNotNull(), amount >= limit)


def money_columns(document: Column, amount_field: Column, currency_field: Column, thresholds_spec: str,
                  high_value_udf: bool = False) -> list[Column]:
    """amount_raw, currency, amount, amount_currency, amount_error, is_high_value from a document's JSON
    (null where amount_field is null: the collection has no money). The amount is parsed by a pandas UDF;
    the high-value flag by Spark SQL functions (or, for the bench, by its pandas UDF)."""
    money = pandas_udf(parse_money, MONEY_TYPE)(document, amount_field, currency_field)  # type: ignore[call-overload]
    if high_value_udf:
        flag = pandas_udf(high_values(thresholds_spec), "boolean")(  # type: ignore[call-overload]
            money["amount"], money["amount_currency"])
    else:
        flag = high_value_sql(money["amount"], money["amount_currency"], thresholds_spec)
    return [*(money[name].alias(name) for name in MONEY_FIELDS), flag.alias("is_high_value")]
