"""Money from messy source values: "$1,234.50", "1.234,50 EUR", "USD 99", 12, 12.5, 1e7,
Decimal128 ({"$numberDecimal": "12.50"}), "", garbage.

Pure Python, so the rules are unit-tested without Spark and read as the specification; the streaming
job runs them in a vectorised UDF (streaming/udfs.py). The same rules in Spark SQL functions cost the
lake query 2.4 times the UDF (git history: streaming/money.py), and Spark's JSON readers give a number's
text through a double or without its trailing zeros. A value that cannot be read gives no amount and a
reason, never an exception. The amount is read from the document's JSON text itself
(`money_from_document`): a number keeps the digits MongoDB stored (0.015 rounds to 0.02, where a double's
0.01499... would give 0.01). Reasons quote the source text with `quoted`.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import cache
from typing import Any, NamedTuple

SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999999999.99")  # fits DECIMAL(18, 2)
_CODE = re.compile(r"^([A-Za-z]{3})\s*(.*)$|^(.*?)\s*([A-Za-z]{3})$")
_NUMBER = re.compile(r"^[+-]?[0-9][0-9.,' ]*$")
_SCIENTIFIC = re.compile(r"^[+-]?[0-9]+(\.[0-9]+)?[eE][+-]?[0-9]+$")
_DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # an extended number's text
_LETTERS = re.compile(r"[A-Za-z]{3}")
_NOT_FINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)
EXTENDED_NUMBERS = ("$numberDecimal", "$numberDouble", "$numberLong", "$numberInt")
SHOWN = 60  # characters of a bad value a reason quotes


def quoted(text: str) -> str:
    """The first SHOWN characters of a value in double quotes, backslash and quote escaped."""
    return '"' + text[:SHOWN].replace("\\", "\\\\").replace('"', '\\"') + '"'


class Amount(NamedTuple):
    value: Decimal | None
    currency: str | None
    error: str | None


class Number(str):
    """A JSON number as it was written in the document (its exact digits); a str, so test it first."""


# One decoder for every document: json.loads with its own number types builds a decoder per call (a
# tenth of the money UDF's time).
_DOCUMENT = json.JSONDecoder(parse_float=Number, parse_int=Number)


def _dump(value: Any) -> str:
    """Compact JSON, numbers written with the document's own digits."""
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@cache
def known_currency(code: str) -> bool:
    """An ISO 4217 currency code (pycountry's list)."""
    import pycountry

    return pycountry.currencies.get(alpha_3=code) is not None


def _decimal(text: str) -> Decimal:
    """The exact value of a number's text (already checked to be one); one too large to hold is infinite,
    so it is out of range."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("Infinity")


def _extended_number(value: dict[str, Any], shown: str) -> Decimal | str:
    """Extended JSON's typed numbers ({"$numberDecimal": "12.50"}, {"$numberDouble": "NaN"}, ...) as a
    Decimal, or the reason it is no amount."""
    if len(value) == 1:
        kind, text = next(iter(value.items()))
        if kind in EXTENDED_NUMBERS and isinstance(text, str):
            if _DECIMAL_TEXT.fullmatch(text):
                return _decimal(text)
            if _NOT_FINITE.fullmatch(text):
                return f"amount is not a finite number ({kind} {text})"
    return f"unparseable amount {quoted(shown)}"


def _field(document: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a parsed document (None where any step is missing)."""
    value: Any = document
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def money_from_document(document: str | None, amount_field: str = "amount",
                        currency_field: str = "currency") -> tuple[str | None, str | None, Amount]:
    """(the amount's source text, the currency field's text, the parsed amount) of a document in
    Extended JSON; the amount is parsed from the document's own digits."""
    if document is None:
        return None, None, Amount(None, None, "missing amount")
    try:
        parsed = _DOCUMENT.decode(document)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return None, None, Amount(None, None, "document is not a JSON object")
    raw, currency = _field(parsed, amount_field), _field(parsed, currency_field)
    raw_text = None if raw is None else raw if isinstance(raw, str) else _dump(raw)
    currency_text = None if currency is None else currency if isinstance(currency, str) else _dump(currency)
    if currency_text is not None and (isinstance(currency, Number) or not isinstance(currency, str)):
        return raw_text, currency_text, Amount(None, None, f"currency is not a currency code: {quoted(currency_text)}")
    if isinstance(raw, Number):
        return raw_text, currency_text, _checked(_decimal(raw), None, raw, currency)
    if raw is None or isinstance(raw, str):
        return raw_text, currency_text, parse_amount(raw, currency)
    assert raw_text is not None
    if isinstance(raw, dict):
        number = _extended_number(raw, raw_text)
        if isinstance(number, str):
            return raw_text, currency_text, Amount(None, None, number)
        return raw_text, currency_text, _checked(number, None, raw_text, currency)
    if isinstance(raw, float) and abs(raw) == float("inf"):  # JSON's non-standard Infinity
        return raw_text, currency_text, Amount(None, None, f"amount out of range {quoted(raw_text)}")
    # true/false, a list, or JSON's non-standard NaN
    return raw_text, currency_text, Amount(None, None, f"unparseable amount {quoted(raw_text)}")


def _number(text: str) -> Decimal | None:
    """A number with ',' or '.' as decimal mark; the other (or ' ') groups thousands."""
    text = text.replace(" ", "").replace("'", "")
    if not _NUMBER.match(text):
        return None
    last_comma, last_dot = text.rfind(","), text.rfind(".")
    if last_comma >= 0 and last_dot >= 0:
        decimal_mark = "," if last_comma > last_dot else "."
    elif last_comma >= 0:
        # "1,234" and "1,234,567" group thousands; "12,5" and "1234,50" are decimals.
        groups = text.split(",")
        thousands = len(groups) > 2 or len(groups[1]) == 3
        decimal_mark = "." if thousands else ","
    else:
        decimal_mark = "." if text.count(".") <= 1 else ","
    grouping = "," if decimal_mark == "." else "."
    if text.count(decimal_mark) > 1:
        return None
    normalised = text.replace(grouping, "").replace(decimal_mark, ".")
    try:
        return Decimal(normalised)
    except InvalidOperation:
        return None


def parse_amount(raw: object, default_currency: str | None = None) -> Amount:
    """The text rules: a currency symbol or code before or after a number whose decimal mark is ',' or '.'."""
    if raw is None:
        return Amount(None, None, "missing amount")
    shown = raw if isinstance(raw, str) else str(raw)
    if isinstance(raw, bool):
        return Amount(None, None, f"unparseable amount {quoted(shown)}")
    if isinstance(raw, int | float | Decimal):  # a number: its own value, whatever its notation
        number = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
        if not number.is_finite():
            return Amount(None, None, f"unparseable amount {quoted(shown)}")
        return _checked(number, None, shown, default_currency)
    text = shown.strip()
    if not text:
        return Amount(None, None, "empty amount")
    currency = None
    if text[0] in SYMBOLS or text[-1] in SYMBOLS:
        symbol = text[0] if text[0] in SYMBOLS else text[-1]
        currency, text = SYMBOLS[symbol], text.strip(symbol).strip()
    match = _CODE.match(text)
    if match:
        code = (match.group(1) or match.group(4)).upper()
        if currency and code != currency:
            return Amount(None, None, f"conflicting currencies in {quoted(shown)}")
        currency, text = code, (match.group(2) if match.group(1) else match.group(3)).strip()
    value = _number(text)
    if value is None and _SCIENTIFIC.match(text):
        value = _decimal(text)
    if value is None:
        return Amount(None, None, f"unparseable amount {quoted(shown)}")
    return _checked(value, currency, shown, default_currency)


def _checked(value: Decimal, currency: str | None, shown: str, default_currency: str | None) -> Amount:
    """A parsed amount in range, rounded to cents, with a known currency (its own, else the document's)."""
    if abs(value) > MAX_AMOUNT:
        return Amount(None, None, f"amount out of range {quoted(shown)}")
    value = value.quantize(CENT, rounding=ROUND_HALF_EVEN)
    if currency is None and default_currency is not None:
        code = default_currency.strip()
        if not _LETTERS.fullmatch(code):
            return Amount(None, None, f"currency is not a currency code: {quoted(default_currency)}")
        currency = code.upper()
    if currency is None:
        return Amount(value, None, "no currency")
    if not known_currency(currency):
        return Amount(None, None, f"unknown currency {quoted(currency)} (not an ISO 4217 code)")
    return Amount(value, currency, None)


def parse_thresholds(spec: str) -> dict[str, Decimal]:
    """ "USD:1000,EUR:900,default:1000" -> {"USD": 1000, "EUR": 900, "DEFAULT": 1000} """
    thresholds = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        code, _, limit = part.partition(":")
        try:
            thresholds[code.strip().upper()] = Decimal(limit)
        except InvalidOperation:
            raise ValueError(f"high-value threshold {part!r} is not CODE:AMOUNT (e.g. USD:1000)") from None
    return thresholds


def is_high_value(value: Decimal | None, currency: str | None, thresholds: dict[str, Decimal]) -> bool | None:
    """None when the amount is unknown, so 'not high value' is never claimed without evidence."""
    if value is None:
        return None
    limit = thresholds.get((currency or "").upper(), thresholds.get("DEFAULT"))
    return None if limit is None else value >= limit
