"""Vectorised (pandas / Arrow) UDFs over streaming/amounts.py's rules.

Vectorised rather than plain Python UDFs: rows cross the JVM/Python boundary in Arrow batches instead
of one pickled row at a time; the per-value rule itself is the same Python function either way.
The UDFs are made when a query is built (pandas_udf needs a running session to read its types).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column
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


def money_columns(document: Column, amount_field: Column, currency_field: Column, thresholds_spec: str) -> list[Column]:
    """amount_raw, currency, amount, amount_currency, amount_error, is_high_value from a document's JSON
    (null where amount_field is null: the collection has no money)."""
    money = pandas_udf(parse_money, MONEY_TYPE)(document, amount_field, currency_field)  # type: ignore[call-overload]
    high_value = pandas_udf(high_values(thresholds_spec), "boolean")  # type: ignore[call-overload]
    return [
        *(money[name].alias(name) for name in MONEY_FIELDS),
        high_value(money["amount"], money["amount_currency"]).alias("is_high_value"),
    ]
