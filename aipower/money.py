"""Money as integer nano-USD and the one rounding rule. Kernel layer.

1 Nanos = 1e-9 USD. Catalog prices are USD per 1M tokens, so a price in nanos per token is
price_usd_per_million * 1000 (exact for any price with up to 3 decimals; finer prices keep the
remainder until the single rounding step below).

Rounding rule (the only one): the cost of one call is computed exactly as a rational number and rounded
UP to the next whole nano-USD, once per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext

Nanos = int

NANOS_PER_USD = 1_000_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens, as exact decimals (finite, not negative)."""

    input: Decimal
    output: Decimal
    # The same prices as integers over one power of ten: cost() is then integer arithmetic, exact at any size
    # (Decimal arithmetic cost about 3 us a call, several times per request).
    scaled: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exponent = min(0, *(_exponent(p) for p in (self.input, self.output)))
        scale = 10**-exponent
        input_units, output_units = (int(p.scaleb(-exponent)) for p in (self.input, self.output))
        if input_units < 0 or output_units < 0:
            raise ValueError(f"a price cannot be negative: {self.input}, {self.output}")
        object.__setattr__(self, "scaled", (input_units, output_units, TOKENS_PER_PRICE_UNIT * scale))


def _exponent(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"a price must be a finite number: {amount}")
    return exponent


def cost(input_tokens: int, output_tokens: int, price: Price) -> Nanos:
    """Cost of one call in nano-USD (token counts are never negative): the exact value, rounded up once."""
    input_units, output_units, per_unit = price.scaled
    exact = (input_tokens * input_units + output_tokens * output_units) * NANOS_PER_USD  # nano-USD x per_unit
    return -(-exact // per_unit)


def format_usd(amount: Decimal) -> str:
    """Decimal USD as a plain string with at least two decimals ("0.34", "3.00")."""
    text = format(amount.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


NANOS_PER_CREDIT = 10_000_000  # 1 credit = $0.01
MAX_NANOS = 2**63 - 1  # what a 64-bit integer column holds: about USD 9.2 billion
MAX_OPERATION_NANOS = 10**18  # USD 1 billion: the most one top-up, grant or cap may be


class MoneyError(ValueError):
    """An amount that is not a whole number of nano-USD, or negative where that makes no sense."""


def usd_to_nanos(usd: Decimal) -> Nanos:
    """Exact conversion; an amount finer than 1e-9 USD is refused rather than rounded (at every precision: the
    default 28 digits would round 5.0000000000000000000000000001 to 5 first)."""
    if not usd.is_finite():
        raise MoneyError(f"{usd} USD is not an amount")
    with localcontext() as exact:
        exact.prec = len(usd.as_tuple().digits) + 12  # room for the coefficient as it is: scaleb only moves it
        nanos = usd.scaleb(9)
        if nanos != nanos.to_integral_value():
            raise MoneyError(f"{usd} USD is not a whole number of nano-USD")
        return int(nanos)


def nanos_to_usd(nanos: Nanos) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def usd_text(nanos: Nanos) -> str:
    """Nanos as a plain decimal USD string without exponent or trailing zeros beyond cents ("0.000001234")."""
    return format_usd(nanos_to_usd(nanos))


def credits_text(nanos: Nanos) -> str:
    return format_usd(Decimal(nanos) / NANOS_PER_CREDIT)
