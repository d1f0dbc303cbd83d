"""aipower/money.py: exact integer nano-USD costs, the single round-up, and USD display."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aipower import money
from aipower.money import NANOS_PER_USD, Price, cost, format_usd


def price(input_usd: str, output_usd: str) -> Price:
    return Price(input=Decimal(input_usd), output=Decimal(output_usd))


def exact_nanos(input_tokens: int, output_tokens: int, p: Price) -> Fraction:
    """The cost as an exact rational number of nano-USD (prices are USD per 1M tokens)."""
    usd = (input_tokens * Fraction(p.input) + output_tokens * Fraction(p.output)) / 1_000_000
    return usd * NANOS_PER_USD


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "p", "expected"),
    [
        (1, 0, price("0.01", "0.01"), 10),  # the documented example: 1 token at $0.01/M
        (0, 1, price("0.01", "0.01"), 10),
        (1, 0, price("0.001", "0"), 1),  # exactly one nano-USD
        (1, 0, price("0.0001", "0"), 1),  # 0.1 nano rounds up to 1
        (3, 0, price("0.0001", "0"), 1),  # 0.3 nano rounds up once, not per token
        (10, 0, price("0.0001", "0"), 1),  # exactly 1
        (11, 0, price("0.0001", "0"), 2),  # 1.1 rounds up to 2
        (0, 0, price("3.00", "18.00"), 0),  # zero tokens cost nothing
        (1_000_000, 0, price("3.00", "18.00"), 3 * NANOS_PER_USD),  # 1M input tokens at $3/M is $3
        (0, 1_000_000, price("3.00", "18.00"), 18 * NANOS_PER_USD),
        (1000, 500, price("0.34", "0.50"), 340_000 + 250_000),
        (7, 3, price("0.13", "1.87"), 910 + 5610),
        (1, 1, price("0", "0"), 0),
        (10**9, 10**9, price("18.00", "30.00"), 48_000 * NANOS_PER_USD),  # big counts stay exact
    ],
)
def test_cost_examples(input_tokens: int, output_tokens: int, p: Price, expected: int) -> None:
    result = cost(input_tokens, output_tokens, p)
    assert result == expected
    assert type(result) is int


@given(
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.decimals(0, 1000, places=6, allow_nan=False, allow_infinity=False),
    st.decimals(0, 1000, places=9, allow_nan=False, allow_infinity=False),
)
def test_cost_is_exact_for_any_size_and_any_number_of_decimals(
    input_tokens: int, output_tokens: int, input_usd: Decimal, output_usd: Decimal
) -> None:
    p = Price(input=input_usd, output=output_usd)
    assert cost(input_tokens, output_tokens, p) == math.ceil(exact_nanos(input_tokens, output_tokens, p))


@pytest.mark.parametrize("amount", ["-0.01", "NaN", "Infinity"])
def test_a_price_must_be_finite_and_not_negative(amount: str) -> None:
    with pytest.raises(ValueError, match="price"):
        Price(input=Decimal(amount), output=Decimal("1"))


def test_the_rounding_is_once_per_call_not_per_side() -> None:
    p = price("0.0005", "0.0005")  # half a nano per token on each side
    assert cost(1, 1, p) == 1  # 0.5 + 0.5 = exactly 1, not 1 + 1


PRICES = [price(*pair) for pair in [("0.01", "0.01"), ("0.34", "0.50"), ("0.0001", "0.0003"), ("1.25", "4.00")]]


@pytest.mark.parametrize("p", PRICES, ids=lambda p: f"{p.input}/{p.output}")
def test_cost_is_the_exact_value_rounded_up(p: Price) -> None:
    for input_tokens in range(0, 400, 7):
        for output_tokens in range(0, 400, 13):
            exact = exact_nanos(input_tokens, output_tokens, p)
            result = cost(input_tokens, output_tokens, p)
            assert result == math.ceil(exact), (input_tokens, output_tokens)
            assert exact <= result < exact + 1


@pytest.mark.parametrize("p", PRICES, ids=lambda p: f"{p.input}/{p.output}")
def test_cost_is_monotonic_in_both_token_counts(p: Price) -> None:
    for base in range(0, 300, 11):
        for step in (1, 2, 17):
            assert cost(base + step, base, p) >= cost(base, base, p)
            assert cost(base, base + step, p) >= cost(base, base, p)


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.34", "0.34"),
        ("3.00", "3.00"),
        ("3", "3.00"),
        ("18", "18.00"),
        ("0.1", "0.10"),
        ("0.10", "0.10"),
        ("100", "100.00"),  # normalize() would give 1E+2: never scientific notation
        ("1E+1", "10.00"),
        ("0", "0.00"),
        ("0.001", "0.001"),
        ("0.000000001", "0.000000001"),
        ("1234.5678", "1234.5678"),
    ],
)
def test_format_usd(amount: str, expected: str) -> None:
    assert format_usd(Decimal(amount)) == expected


@pytest.mark.parametrize("usd", ["5.0000000000000000000000000001", "0.0000000001", "1234567890123456789012.0000000001"])
def test_an_amount_finer_than_a_nano_is_refused_at_any_precision(usd: str) -> None:
    with pytest.raises(money.MoneyError, match="whole number of nano-USD"):
        money.usd_to_nanos(Decimal(usd))


def test_a_long_amount_converts_exactly() -> None:
    assert money.usd_to_nanos(Decimal("1234567890123456789012.123456789")) == 1234567890123456789012123456789
