from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.amounts import Amount, is_high_value, parse_amount, parse_thresholds

D = Decimal


@pytest.mark.parametrize(
    ("raw", "default", "expected"),
    [
        ("$1,234.50", None, Amount(D("1234.50"), "USD", None)),
        ("1.234,50 EUR", None, Amount(D("1234.50"), "EUR", None)),
        ("USD 99", None, Amount(D("99.00"), "USD", None)),
        ("usd99", None, Amount(D("99.00"), "USD", None)),
        ("99 gbp", None, Amount(D("99.00"), "GBP", None)),
        ("€12", None, Amount(D("12.00"), "EUR", None)),
        ("£ 1 234,5", None, Amount(D("1234.50"), "GBP", None)),
        ("1'234.50 CHF", None, Amount(D("1234.50"), "CHF", None)),
        (12, "EUR", Amount(D("12.00"), "EUR", None)),
        (12.5, "usd", Amount(D("12.50"), "USD", None)),
        ("12.5", "USD", Amount(D("12.50"), "USD", None)),
        ("12,5", "EUR", Amount(D("12.50"), "EUR", None)),
        ("1,234", "USD", Amount(D("1234.00"), "USD", None)),
        ("1,234,567.891", "USD", Amount(D("1234567.89"), "USD", None)),
        ("1.234.567", "EUR", Amount(D("1234567.00"), "EUR", None)),
        ("-5.00", "USD", Amount(D("-5.00"), "USD", None)),
        (Decimal("7.005"), "USD", Amount(D("7.00"), "USD", None)),  # banker's rounding
        ("", "USD", Amount(None, None, "empty amount")),
        ("   ", "USD", Amount(None, None, "empty amount")),
        (None, "USD", Amount(None, None, "missing amount")),
        ("n/a", "USD", Amount(None, None, 'unparseable amount "n/a"')),
        ("??", "USD", Amount(None, None, 'unparseable amount "??"')),
        ("1.2.3,4,5", "USD", Amount(None, None, 'unparseable amount "1.2.3,4,5"')),
        (True, "USD", Amount(None, None, 'unparseable amount "True"')),
        (float("nan"), "USD", Amount(None, None, 'unparseable amount "nan"')),
        ("$5 EUR", None, Amount(None, None, 'conflicting currencies in "$5 EUR"')),
        ("12", None, Amount(D("12.00"), None, "no currency")),
        ("1e400", "USD", Amount(None, None, 'amount out of range "1e400"')),
        ("99999999999999999999", "USD", Amount(None, None, 'amount out of range "99999999999999999999"')),
    ],
)
def test_parse_amount(raw: object, default: str | None, expected: Amount) -> None:
    assert parse_amount(raw, default) == expected


@given(st.one_of(st.none(), st.text(max_size=30), st.integers(), st.floats(allow_nan=True), st.booleans()),
       st.one_of(st.none(), st.sampled_from(["USD", "eur", ""])))
def test_parse_amount_never_raises_and_always_explains(raw: object, default: str | None) -> None:
    result = parse_amount(raw, default)
    assert (result.value is None) == (result.error is not None) or result.error == "no currency"
    if result.value is not None:
        assert result.value == result.value.quantize(Decimal("0.01"))


@given(st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_formatted_amounts_round_trip(value: Decimal) -> None:
    assert parse_amount(f"${value:,.2f}").value == value
    assert parse_amount(f"{value:.2f} EUR").value == value


def test_high_value_per_currency_with_default() -> None:
    thresholds = parse_thresholds("USD:1000, eur:900, default:500")
    assert is_high_value(D("1000"), "USD", thresholds) is True
    assert is_high_value(D("999.99"), "USD", thresholds) is False
    assert is_high_value(D("900"), "EUR", thresholds) is True
    assert is_high_value(D("600"), "JPY", thresholds) is True
    assert is_high_value(None, "USD", thresholds) is None
    assert is_high_value(D("10"), "JPY", parse_thresholds("USD:1")) is None
    with pytest.raises(ValueError, match="CODE:AMOUNT"):
        parse_thresholds("USD=1000")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ('{"amount": {"$numberDecimal": "12.50"}, "currency": "USD"}', Amount(D("12.50"), "USD", None)),
        ('{"amount": {"$numberDecimal": "NaN"}, "currency": "USD"}',
         Amount(None, None, "amount is not a finite number ($numberDecimal NaN)")),
        ('{"amount": {"$numberDecimal": "-Infinity"}, "currency": "USD"}',
         Amount(None, None, "amount is not a finite number ($numberDecimal -Infinity)")),
        ('{"amount": {"$numberDouble": "Infinity"}, "currency": "USD"}',
         Amount(None, None, "amount is not a finite number ($numberDouble Infinity)")),
        ('{"amount": {"$numberLong": "1200"}, "currency": "EUR"}', Amount(D("1200.00"), "EUR", None)),
        ('{"amount": 12345678.9, "currency": "USD"}', Amount(D("12345678.90"), "USD", None)),
        ('{"amount": 1e7, "currency": "USD"}', Amount(D("10000000.00"), "USD", None)),
        ('{"amount": 0.0005, "currency": "USD"}', Amount(D("0.00"), "USD", None)),
        ('{"amount": 0.015, "currency": "USD"}', Amount(D("0.02"), "USD", None)),  # the digits, not a double's
        ('{"amount": "1.5e3", "currency": "GBP"}', Amount(D("1500.00"), "GBP", None)),
        ('{"amount": 12, "currency": {"code": "USD"}}',
         Amount(None, None, 'currency is not a currency code: "{\\"code\\":\\"USD\\"}"')),
        ('{"amount": 12, "currency": "XYZ"}', Amount(None, None, 'unknown currency "XYZ" (not an ISO 4217 code)')),
        ('{"amount": "ABC 12"}', Amount(None, None, 'unknown currency "ABC" (not an ISO 4217 code)')),
        ('{"amount": {"value": 3}, "currency": "USD"}', Amount(None, None, 'unparseable amount "{\\"value\\":3}"')),
        ('{"amount": [1, 2], "currency": "USD"}', Amount(None, None, 'unparseable amount "[1,2]"')),
        ('{"currency": "USD"}', Amount(None, None, "missing amount")),
    ],
)
def test_money_is_read_from_the_documents_own_digits(document: str, expected: Amount) -> None:
    from streaming.amounts import money_from_document

    assert money_from_document(document)[2] == expected


def test_the_amounts_source_text_is_kept() -> None:
    from streaming.amounts import money_from_document

    assert money_from_document('{"amount": 1e7, "currency": "USD"}')[:2] == ("1e7", "USD")
    assert money_from_document('{"amount": {"$numberDecimal": "12.50"}}')[0] == '{"$numberDecimal":"12.50"}'
