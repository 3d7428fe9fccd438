"""The money columns in Spark SQL functions: streaming/amounts.py's rules step by step, so the lake query
runs no Python on its hot path (a pandas UDF cost a Python worker per task and an Arrow round trip of
every document; bench/udf_bench.py compares the two). tests/unit/test_money_sql.py holds this to the
Python rules value by value.

The document is read once, by `from_json` into variants of only the top-level fields the money fields
sit under: a variant keeps a number's exact value as a decimal, and its type tells a number from a
string. What Spark's JSON reader cannot give back, and so the only differences from the Python rules:
- amount_raw of a JSON number is its value as Spark spells it: 12.5 for 12.50, 0 for -0.0, 1.0E7 for 1e7
  (Decimal128 amounts, {"$numberDecimal": "12.50"}, keep their text);
- a number written with an exponent (1e7, 1.5e-2) is read as a double, so its value is the double's: the
  same cents for every amount in range (Python's JSON writes an exponent only below 1e-4 and from 1e16);
- an object's keys in amount_raw are in sorted order (a variant's).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse.core.collections import Money
from streaming.amounts import EXTENDED_NUMBERS, MAX_AMOUNT, SHOWN, SYMBOLS
from streaming.udfs import MONEY_FIELDS, high_value_sql

# Python's str.strip() and regex \s whitespace (Java's \s is ASCII only), and as a Java regex class.
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_WS = "[" + "".join(f"\\u{ord(c):04x}" for c in _WHITESPACE) + "]"
_CODE = rf"\A([A-Za-z]{{3}}){_WS}*([^\n]*)\z|\A([^\n]*?){_WS}*([A-Za-z]{{3}})\z"  # amounts._CODE
_NUMBER = r"\A[+-]?[0-9][0-9.,]*\z"  # amounts._NUMBER, spaces and apostrophes already removed
_SCIENTIFIC = r"\A[+-]?[0-9]+(\.[0-9]+)?[eE][+-]?[0-9]+\z"
_DECIMAL_TEXT = r"\A[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\z"
_NOT_FINITE = r"(?i)\A[+-]?(inf|infinity|nan)\z"
_EXTENDED = r"\AOBJECT<`(\$number(?:Decimal|Double|Long|Int))`: STRING>\z"  # schema_of_variant of one
EXACT = "decimal(38,20)"  # a parsed value before rounding: 18 digits before the point, 20 after
_CORRUPT = "\x00corrupt"  # no MongoDB field name holds a NUL
_NUMBERS = ("BIGINT", "INT", "SMALLINT", "TINYINT", "FLOAT", "DOUBLE")


@cache
def _currencies() -> tuple[str, ...]:
    import pycountry

    return tuple(sorted(c.alpha_3 for c in pycountry.currencies))


def _symbol_currency(symbol: Column) -> Column:
    return F.element_at(F.create_map(*(F.lit(v) for pair in SYMBOLS.items() for v in pair)), symbol)


def _strip(text: Column) -> Column:
    """Python's str.strip(): Spark's btrim over the same characters."""
    return F.btrim(text, F.lit(_WHITESPACE))


def quoted(text: Column) -> Column:
    """amounts.quoted: the first SHOWN characters in double quotes, backslash and quote escaped."""
    inner = F.replace(F.replace(F.substring(text, 1, SHOWN), F.lit("\\"), F.lit("\\\\")), F.lit('"'), F.lit('\\"'))
    return F.concat(F.lit('"'), inner, F.lit('"'))


def _count(text: Column, char: str) -> Column:
    return F.length(text) - F.length(F.replace(text, F.lit(char), F.lit("")))


def _quote_error(prefix: str, text: Column, suffix: str = "") -> Column:
    return F.concat(F.lit(prefix), quoted(text), F.lit(suffix))


def _top_and_path(field: str) -> tuple[str, str]:
    top, _, rest = field.partition(".")
    return top, "$" + "".join(f"['{step}']" for step in rest.split(".") if rest)


def _field(fields: Column, collection: Column, paths: Mapping[str, str]) -> Column:
    """The variant at each money collection's path for the row's collection; null where it is missing."""
    chosen = F.lit(None).cast("variant")
    for name, path in paths.items():
        top, rest = _top_and_path(path)
        value = fields[top] if rest == "$" else F.try_variant_get(fields[top], rest, "variant")
        chosen = F.when(collection == name, value).otherwise(chosen)
    return chosen


def _text(value: Column, kind: Column) -> Column:
    """A JSON value's source text: a string itself, a double as Java spells it, anything else as JSON."""
    return (F.when(value.isNull() | (kind == "VOID"), F.lit(None))
            .when(kind.isin("STRING", "DOUBLE", "FLOAT"), F.try_variant_get(value, "$", "string"))
            .otherwise(F.to_json(value)))


def _steps(money: Mapping[str, Money], document: Column, collection: Column) -> list[dict[str, Column]]:
    """The rules as columns computed one projection after another, each step reading the ones before by
    name: Spark then computes each once (an expression used twice is not copied into the next
    projection), where one nested expression would repeat its parts (and outgrew Java's method size)."""
    tops = sorted({_top_and_path(path)[0] for m in money.values() for path in (m.amount, m.currency)})
    schema = T.StructType([*(T.StructField(top, T.VariantType()) for top in tops),
                           T.StructField(_CORRUPT, T.StringType())])
    has_money = collection.isin(*money) if money else F.lit(False)
    col = F.col
    kind, raw, stripped, symbol, text, coded, number = (col(f"_money_{n}") for n in (
        "kind", "raw", "stripped", "symbol", "text", "coded", "number"))
    is_text = kind == "STRING"
    matched = coded != text  # the code pattern matched: `coded` is code, NUL, the rest
    comma, dot = col("_money_comma"), col("_money_dot")
    groups = F.split(number, ",")
    decimal_mark = (F.when((comma > 0) & (dot > 0), F.when(comma < dot, ",").otherwise("."))
                    .when(comma > 0, F.when((F.size(groups) > 2) | (F.length(F.element_at(groups, 2)) == 3), ".")
                          .otherwise(","))
                    .otherwise(F.when(_count(number, ".") <= 1, ".").otherwise(",")))
    mark = col("_money_mark")
    extended_kind = F.regexp_extract(kind, _EXTENDED, 1)
    extended_text = F.coalesce(*(F.try_variant_get(col("_money_amount"), f"$['{name}']", "string")
                                 for name in EXTENDED_NUMBERS))
    infinite = (kind == "DOUBLE") & raw.isin("Infinity", "-Infinity")  # 1e400, or JSON's non-standard Infinity
    is_number = kind.isin(*_NUMBERS) | kind.startswith("DECIMAL")
    number_text = (F.when(is_text & number.rlike(_NUMBER) & (_count(number, mark) <= 1),
                          F.when(mark == ".", F.translate(number, ".,", ".")).otherwise(F.translate(number, ",.", ".")))
                   .when(is_text & col("_money_rest").rlike(_SCIENTIFIC), col("_money_rest"))
                   .when((col("_money_extended_kind") != "") & col("_money_extended_text").rlike(_DECIMAL_TEXT),
                         col("_money_extended_text"))
                   .when(is_number & ~infinite & (raw != "NaN"), raw))
    currency_kind, currency_text = col("_money_currency_kind"), col("_money_currency_text")
    code = col("_money_code")
    error = (
        F.when(document.isNull(), F.lit("missing amount"))
        .when(col("_money_fields")[_CORRUPT].isNotNull(), F.lit("document is not a JSON object"))
        .when(currency_kind.isNotNull() & ~currency_kind.isin("STRING", "VOID"),
              _quote_error("currency is not a currency code: ", currency_text))
        .when(raw.isNull(), F.lit("missing amount"))
        .when(is_text & (stripped == ""), F.lit("empty amount"))
        .when(is_text & symbol.isNotNull() & code.isNotNull() & (code != _symbol_currency(symbol)),
              _quote_error("conflicting currencies in ", raw))
        .when(infinite, _quote_error("amount out of range ", raw))
        .when(~is_text & (col("_money_extended_kind") != "") & col("_money_extended_text").rlike(_NOT_FINITE),
              F.concat(F.lit("amount is not a finite number ("), col("_money_extended_kind"), F.lit(" "),
                       col("_money_extended_text"), F.lit(")")))
        .when(col("_money_number_text").isNull(), _quote_error("unparseable amount ", raw))
    )
    value = col("_money_value")
    default = _strip(F.when(currency_kind == "STRING", currency_text))
    own = F.when(is_text, F.coalesce(code, _symbol_currency(symbol)))
    currency = F.coalesce(own, F.upper(default))
    checked = (  # amounts._checked
        F.when(col("_money_error").isNotNull(), col("_money_error"))
        .when(value.isNull() | (F.abs(value) > F.lit(MAX_AMOUNT).cast(EXACT)),
              _quote_error("amount out of range ", raw))
        .when(own.isNull() & default.isNotNull() & ~default.rlike(r"\A[A-Za-z]{3}\z"),
              _quote_error("currency is not a currency code: ", currency_text))
        .when(currency.isNull(), F.lit("no currency"))
        .when(~currency.isin(*_currencies()), _quote_error("unknown currency ", currency, " (not an ISO 4217 code)"))
    )
    final_error = col("_money_checked")
    kept = final_error.isNull() | (final_error == "no currency")
    return [
        {"_money_fields": F.when(has_money & document.isNotNull(),
                                 F.from_json(document, schema, {"columnNameOfCorruptRecord": _CORRUPT}))},
        {"_money_amount": _field(col("_money_fields"), collection, {n: m.amount for n, m in money.items()}),
         "_money_currency": _field(col("_money_fields"), collection, {n: m.currency for n, m in money.items()})},
        {"_money_kind": F.schema_of_variant("_money_amount"),
         "_money_currency_kind": F.schema_of_variant("_money_currency")},
        {"_money_raw": _text(col("_money_amount"), kind),
         "_money_currency_text": _text(col("_money_currency"), currency_kind)},
        {"_money_stripped": F.when(is_text, _strip(raw)),
         "_money_extended_kind": F.when(kind.startswith("OBJECT"), extended_kind)},
        {"_money_symbol": F.when(F.substring(stripped, 1, 1).isin(*SYMBOLS), F.substring(stripped, 1, 1))
                           .when(F.substring(stripped, -1, 1).isin(*SYMBOLS), F.substring(stripped, -1, 1)),
         "_money_extended_text": F.when(col("_money_extended_kind") != "", extended_text)},
        {"_money_text": F.when(symbol.isNull(), stripped).otherwise(_strip(F.btrim(stripped, symbol)))},
        {"_money_coded": F.when(is_text, F.regexp_replace(text, _CODE, "$1$4\x00$2$3"))},
        {"_money_code": F.when(is_text & matched, F.upper(F.substring(coded, 1, 3))),
         "_money_rest": F.when(is_text, F.when(matched, _strip(F.substring(coded, 5, 1 << 30))).otherwise(text))},
        {"_money_number": F.when(is_text, F.regexp_replace(col("_money_rest"), "[ ']", ""))},
        {"_money_comma": F.instr(F.reverse(number), ","), "_money_dot": F.instr(F.reverse(number), ".")},
        {"_money_mark": F.when(is_text, decimal_mark)},
        {"_money_number_text": number_text},
        {"_money_value": col("_money_number_text").try_cast(EXACT), "_money_error": error},
        {"_money_checked": F.when(has_money, checked)},
        {"amount_raw": F.when(has_money, raw), "currency": F.when(has_money, currency_text),
         "amount": F.when(has_money & kept, F.bround(value, 2).cast("decimal(18,2)")),
         "amount_currency": F.when(has_money & final_error.isNull(), currency),
         "amount_error": final_error},
    ]


def with_money(frame: DataFrame, document: Column, collection: Column, money: Mapping[str, Money],
               thresholds_spec: str) -> DataFrame:
    """`frame` with amount_raw, currency, amount, amount_currency, amount_error and is_high_value: null for
    a collection without money (not in `money`)."""
    steps = _steps(money, document, collection)
    assert tuple(steps[-1]) == MONEY_FIELDS
    for step in steps:
        frame = frame.withColumns(step)
    flag = high_value_sql(F.col("amount"), F.col("amount_currency"), thresholds_spec)
    return frame.withColumn("is_high_value", flag).drop(*(name for step in steps[:-1] for name in step))
