"""Money from messy source values: "$1,234.50", "1.234,50 EUR", "USD 99", 12, 12.5, "", garbage.

Pure Python, so the rules are unit-tested without Spark; streaming/udfs.py wraps them as vectorised
UDFs. A value that cannot be read gives no amount and a reason, never an exception.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import NamedTuple

SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999999999.99")  # fits DECIMAL(18, 2)
_CODE = re.compile(r"^([A-Za-z]{3})\s*(.*)$|^(.*?)\s*([A-Za-z]{3})$")
_NUMBER = re.compile(r"^[+-]?[0-9][0-9.,' ]*$")


class Amount(NamedTuple):
    value: Decimal | None
    currency: str | None
    error: str | None


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
    if raw is None:
        return Amount(None, None, "missing amount")
    if isinstance(raw, bool):
        return Amount(None, None, f"unparseable amount {raw!r}")
    if isinstance(raw, int | float | Decimal):
        text = repr(raw) if isinstance(raw, float) else str(raw)
    else:
        text = str(raw).strip()
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
            return Amount(None, None, f"conflicting currencies in {raw!r}")
        currency, text = code, (match.group(2) if match.group(1) else match.group(3)).strip()
    value = _number(text)
    if value is None or not value.is_finite():
        return Amount(None, None, f"unparseable amount {str(raw)[:60]!r}")
    if abs(value) > MAX_AMOUNT:
        return Amount(None, None, f"amount out of range {str(raw)[:60]!r}")
    value = value.quantize(CENT, rounding=ROUND_HALF_EVEN)
    currency = currency or (default_currency.upper() if default_currency else None)
    return Amount(value, currency, None if currency else "no currency")


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
