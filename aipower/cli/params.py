"""Command-line parameters several commands share: amounts in USD, ledger notes, the operator's catalog."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

import click

from aipower import catalog as catalog_file
from aipower import money
from aipower.settings import from_environ

T = TypeVar("T")

MAX_NOTE = 200  # characters of a ledger row's note (ledger.note)


class Usd(click.ParamType[Decimal]):
    """A non-negative amount in USD, a whole number of nano-USD, at most what one operation may move."""

    name = "USD"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount in USD (e.g. 20 or 4.99)", param, ctx)
        if not amount.is_finite() or amount < 0:
            self.fail(f"{value!r} must be a positive amount", param, ctx)
        try:
            nanos = money.usd_to_nanos(amount)
        except money.MoneyError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)
        if nanos > money.MAX_OPERATION_NANOS:
            self.fail(f"{value!r}: at most {money.usd_text(money.MAX_OPERATION_NANOS)} USD", param, ctx)
        return amount


USD = Usd()


def note(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ledger note: at most MAX_NOTE characters (PostgreSQL refused a longer one with a traceback; SQLite kept it)."""
    if value is not None and len(value) > MAX_NOTE:
        raise click.BadParameter(f"at most {MAX_NOTE} characters ({len(value)} given)", ctx, param)
    return value


def catalog_option(command: Callable[..., T]) -> Callable[..., T]:
    """`--catalog FILE` (repeatable), given to the command as `catalog_paths`; without it, AIPOWER_CATALOG's."""
    return click.option(
        "--catalog",
        "catalog_paths",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Operator catalog file merged over the shipped one (repeatable) [AIPOWER_CATALOG].",
    )(command)


def load_catalog(catalog_paths: tuple[Path, ...]) -> catalog_file.Catalog:
    """The catalog of `--catalog`, else of AIPOWER_CATALOG (as `serve` reads it: a command run with the same flag
    applies the same billing rules: trial calls, bonuses)."""
    return catalog_file.load(catalog_paths or from_environ().catalog_paths)
