"""Vectorised (pandas / Arrow) UDFs over streaming/amounts.py's rules.

Vectorised rather than plain Python UDFs: rows cross the JVM/Python boundary in Arrow batches instead
of one pickled row at a time; the per-value rule itself is the same Python function either way.
The UDFs are made when a query is built (pandas_udf needs a running session to read its types).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column
from pyspark.sql.functions import pandas_udf

from streaming.amounts import is_high_value, parse_amount, parse_thresholds

AMOUNT_TYPE = "amount DECIMAL(18, 2), currency STRING, error STRING"


def parse_amounts(raw: pd.Series, currency: pd.Series) -> pd.DataFrame:
    """(raw amount text, the document's currency field) -> (amount, currency, error) per row."""
    parsed = [parse_amount(r, c) for r, c in zip(raw, currency, strict=True)]
    return pd.DataFrame(parsed, columns=["amount", "currency", "error"])


def high_values(thresholds_spec: str):  # noqa: ANN201 - returns the pandas function for the UDF
    thresholds = parse_thresholds(thresholds_spec)

    def flags(amount: pd.Series, currency: pd.Series) -> pd.Series:
        return pd.Series([is_high_value(a, c, thresholds) for a, c in zip(amount, currency, strict=True)],
                         dtype="boolean")

    return flags


def money_columns(raw: Column, currency: Column, thresholds_spec: str) -> list[Column]:
    """amount, amount_currency, amount_error, is_high_value from a raw amount and currency field."""
    money = pandas_udf(parse_amounts, AMOUNT_TYPE)(raw, currency)  # type: ignore[call-overload]
    high_value = pandas_udf(high_values(thresholds_spec), "boolean")  # type: ignore[call-overload]
    return [
        money["amount"].alias("amount"),
        money["currency"].alias("amount_currency"),
        money["error"].alias("amount_error"),
        high_value(money["amount"], money["currency"]).alias("is_high_value"),
    ]
