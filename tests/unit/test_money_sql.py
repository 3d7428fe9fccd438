"""The money columns in Spark SQL (streaming/money.py) give what the rules in Python give
(streaming/amounts.money_from_document), document by document: hand-picked messy cases, then documents
generated as the producer writes them (relaxed Extended JSON) and hostile ones."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakehouse.core.collections import Money
from streaming.amounts import Number, is_high_value, money_from_document, parse_thresholds

pytestmark = pytest.mark.spark

THRESHOLDS = "USD:1000,EUR:900,default:500"
TEXTS = ["$1,234.50", "1.234,50 EUR", "USD 99", "usd99", "99 gbp", "€12", "£ 1 234,5", "1'234.50 CHF", "12.5",
         "12,5", "1,234", "1,234,567.891", "1.234.567", "-5.00", "", "   ", "n/a", "??", "1.2.3,4,5", "$5 EUR",
         "12", "1e400", "99999999999999999999", "1.5e3", "ABC 12", "$$5$", "€5$", "5 usd\n", "\u00a07,50\u2003EUR",
         "EUR\n5", "usd", "$", "1,", "1.,5", "+.5", "9999999999999999.994", "9999999999999999.995", "0.005",
         "0.015", "0.025", 'say "5" \\ ok', "1" * 70, "\u3000 ¥ 12 \u2028", "1e-400", "1,2,3", "12 34,5"]
DOCUMENTS = [
    None, "not json", "[1, 2]", "5", '"text"', "{}", '{"amount": null, "currency": null}',
    '{"amount": {"$numberDecimal": "12.50"}, "currency": "USD"}',
    '{"amount": {"$numberDecimal": "NaN"}, "currency": "USD"}',
    '{"amount": {"$numberDecimal": "-Infinity"}, "currency": "USD"}',
    '{"amount": {"$numberDouble": "Infinity"}, "currency": "USD"}',
    '{"amount": {"$numberDecimal": "1E+400"}, "currency": "USD"}',
    '{"amount": {"$numberDecimal": "garbage"}, "currency": "USD"}',
    '{"amount": {"$numberLong": "1200"}, "currency": "EUR"}', '{"amount": {"$numberInt": 12}, "currency": "EUR"}',
    '{"amount": {"$numberLong": "1", "x": 2}, "currency": "EUR"}',
    '{"amount": 12345678.9, "currency": "USD"}', '{"amount": 0.0005, "currency": "USD"}',
    '{"amount": 0.015, "currency": "USD"}', '{"amount": 0.025, "currency": "usd "}',
    '{"amount": 12345678901234567.891, "currency": "USD"}', '{"amount": 9007199254740993, "currency": "USD"}',
    '{"amount": 12, "currency": {"code": "USD"}}', '{"amount": 12, "currency": 5}', '{"amount": 12, "currency": "XYZ"}',
    '{"amount": 12, "currency": "dollars"}', '{"amount": 12, "currency": ""}', '{"amount": 12}',
    '{"amount": {"value": 3}, "currency": "USD"}', '{"amount": [1, 2], "currency": "USD"}', '{"amount": true}',
    '{"amount": false, "currency": "USD"}', '{"currency": "USD"}', '{"amount": NaN, "currency": "USD"}',
    '{"amount": -Infinity}', '{"amount": 1e400}',
    '{"amount": 12.50, "currency": "EUR"}', '{"amount": -0.0, "currency": "EUR"}', '{"amount": 2.291131114974755e+16}',
    '{"amount": 5, "amount": 6, "currency": "USD"}', '{"amount": "7", "currency": "GBP", "items": [{"a": 1}]}',
    *(json.dumps({"amount": text, "currency": currency}) for text in TEXTS for currency in ("USD", None)),
]


def _python(document: str | None) -> tuple[object, ...]:
    raw, currency, amount = money_from_document(document)
    flag = is_high_value(amount.value, amount.currency, parse_thresholds(THRESHOLDS))
    return raw, currency, amount.value, amount.currency, amount.error, flag


def _spark(spark: object, documents: list[str | None]) -> list[tuple[object, ...]]:
    from pyspark.sql import functions as F

    from streaming.money import with_money

    frame = spark.createDataFrame(pa.table({  # type: ignore[attr-defined]
        "n": list(range(len(documents))), "document": pa.array(documents, pa.string()),
        "collection": ["orders" if i % 7 else "customers" for i in range(len(documents))]}))
    money = with_money(frame, F.col("document"), F.col("collection"), {"orders": Money()}, THRESHOLDS)
    rows = money.orderBy("n").collect()
    return [(r["collection"], r["amount_raw"], r["currency"], r["amount"], r["amount_currency"], r["amount_error"],
             r["is_high_value"]) for r in rows]


def _number(document: str | None) -> str | None:
    """The amount's JSON text when it is a number (Spark spells those its own way: streaming/money.py)."""
    try:
        amount = json.loads(document or "", parse_float=Number, parse_int=Number, parse_constant=Number)
    except ValueError:
        return None
    value = amount.get("amount") if isinstance(amount, dict) else None
    return value if isinstance(value, Number) else None


def _agree(spark: object, documents: list[str | None]) -> None:
    for document, (collection, *got) in zip(documents, _spark(spark, documents), strict=True):
        if collection != "orders":  # no money: every column null
            assert got == [None] * 6, document
            continue
        expected = list(_python(document))
        number = _number(document)
        if number is not None:
            # the same value (the same double where it has an exponent), in Spark's spelling
            exact = not re.search("[eEIN]", number)
            value = Decimal if exact else (lambda text: repr(float(text)))  # repr: nan equals nan
            assert value(got[0]) == value(number), document
            got[0] = expected[0]
            got[4] = got[4] and got[4].split(' "')[0]
            expected[4] = expected[4] and expected[4].split(' "')[0]
        assert got == expected, document


def test_messy_amounts_and_documents_agree_with_the_python_rules(spark_local: object) -> None:
    _agree(spark_local, DOCUMENTS)


# The producer writes relaxed Extended JSON: doubles with Python's repr, Decimal128 as $numberDecimal.
_NOISE = st.text(alphabet=st.sampled_from(list("0123456789.,' -+$€£¥eEUSDurgbp\t\n\u00a0\u2003\"\\x")), max_size=14)
_AMOUNTS = st.one_of(
    st.none(), _NOISE, st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.decimals(allow_nan=True, allow_infinity=True, places=None).map(lambda d: {"$numberDecimal": str(d)}),
    st.decimals(min_value=-10**7, max_value=10**7, places=3).map(lambda d: f"{d:,}"),
    st.booleans(), st.lists(st.integers(), max_size=2),
)
_CURRENCIES = st.one_of(st.none(), st.sampled_from(["USD", "eur", " gbp ", "JPY", "XTS", "XYZ", "dollars", ""]),
                        st.integers())


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_AMOUNTS, _CURRENCIES), min_size=1, max_size=300))
def test_generated_documents_agree_with_the_python_rules(spark_local: object,
                                                         values: list[tuple[object, object]]) -> None:
    _agree(spark_local, [json.dumps({"amount": amount, "currency": currency, "n": i})
                         for i, (amount, currency) in enumerate(values)])
