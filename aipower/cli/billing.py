"""`aipower credits|balance|cap|ledger`: top-ups, grants, balances, daily caps, ledger verification and repair."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.cli.params import USD, catalog_option, load_catalog, note
from aipower.cli.storage import run
from aipower.gateway.protocols import Balance
from aipower.money import MoneyError, credits_text, format_usd, usd_text
from aipower.storage import accounts, ledger_owners
from aipower.storage import users as user_store

T = TypeVar("T")


@click.group()
def credits() -> None:
    """Add money to a user's balance."""


_REFERENCE_HELP = (
    "The payment's or invoice's id: a second credit with the same reference does nothing (safe to retry), and "
    "one for another user or amount is refused."
)


@credits.command("add")
@click.argument("email")
@click.argument("usd", type=USD)
@click.option("--reason", default=None, callback=note, help="A note stored on the ledger row.")
@click.option("--reference", default=None, help=_REFERENCE_HELP)
@catalog_option
def add(email: str, usd: Decimal, reason: str | None, reference: str | None, catalog_paths: tuple[Path, ...]) -> None:
    """Credit a top-up of USD (counts for the tier unlock and earns the configured bonuses)."""
    rules = load_catalog(catalog_paths).billing

    async def operation(engine: AsyncEngine) -> int:
        user = await user_store.find(engine, email)
        return await accounts.top_up(engine, user.id, usd, rules, reason, reference)

    total = _run_credit(operation, email)
    if total is not None:
        click.echo(f"credited ${usd_text(total)} ({credits_text(total)} credits, bonuses included) to {email}")


@credits.command("grant")
@click.argument("email")
@click.argument("usd", type=USD)
@click.option("--reason", default=None, callback=note, help="A note stored on the ledger row.")
@click.option("--reference", default=None, help=_REFERENCE_HELP)
def grant(email: str, usd: Decimal, reason: str | None, reference: str | None) -> None:
    """Gift USD to a user (no bonus, does not unlock the premium models)."""

    async def operation(engine: AsyncEngine) -> int:
        user = await user_store.find(engine, email)
        return await accounts.grant(engine, user.id, usd, reason, reference)

    total = _run_credit(operation, email)
    if total is not None:
        click.echo(f"granted ${usd_text(total)} to {email}")


@credits.command("deduct")
@click.argument("email")
@click.argument("usd", type=USD)
@click.option("--reason", required=True, callback=note, help="Why (stored on the ledger row): e.g. a refunded payment.")
@click.option("--reference", default=None, help=_REFERENCE_HELP)
def deduct(email: str, usd: Decimal, reason: str, reference: str | None) -> None:
    """Take USD back from a user's balance: a correction (a mistaken top-up, a chargeback). Never below zero."""

    async def operation(engine: AsyncEngine) -> int:
        user = await user_store.find(engine, email)
        return await accounts.deduct(engine, user.id, usd, reason, reference)

    total = _run_credit(operation, email)
    if total is not None:
        click.echo(f"deducted ${usd_text(total)} from {email}")


def _run_credit(operation: Callable[[AsyncEngine], Awaitable[int]], email: str) -> int | None:
    """The amount credited; None (exit 0) when the reference was credited before: a retry changes nothing."""
    try:
        return _run_money(operation)
    except accounts.AlreadyCredited as done:
        click.echo(f"already credited to {email}: {done}")
        return None


@click.command()
@click.argument("email")
def balance(email: str) -> None:
    """Show a user's balance, holds, trial calls and today's spend."""

    async def operation(engine: AsyncEngine) -> Balance:
        user = await user_store.find(engine, email)
        return await accounts.balance(engine, user.id)

    b = _run_money(operation)
    cap = "none" if b.daily_cap_nanos is None else f"${usd_text(b.daily_cap_nanos)}"
    click.echo(f"balance:      ${usd_text(b.balance_nanos)} ({credits_text(b.balance_nanos)} credits)")
    click.echo(f"held:         ${usd_text(b.held_nanos)}")
    click.echo(f"top-ups:      ${usd_text(b.lifetime_topup_nanos)}")
    click.echo(f"trial calls:  {b.trial_calls_left}")
    click.echo(f"today (UTC):  ${usd_text(b.spent_today_nanos)} spent, cap {cap}")


@click.group()
def cap() -> None:
    """Daily spending caps (UTC day)."""


@cap.command("set")
@click.argument("email")
@click.argument("usd", type=USD, required=False)
def set_cap(email: str, usd: Decimal | None) -> None:
    """Set a user's daily cap to USD; without USD, remove the cap."""

    async def operation(engine: AsyncEngine) -> None:
        user = await user_store.find(engine, email)
        await accounts.set_cap(engine, user.id, usd)

    _run_money(operation)
    click.echo(f"daily cap for {email}: {'none' if usd is None else f'${format_usd(usd)}'}")  # not $1E+2


@click.group()
def ledger() -> None:
    """Ledger checks."""


@ledger.command("verify")
@click.option("--repair", is_flag=True, help="Release holds abandoned by a stopped process (no charge).")
@click.option(
    "--older-than",
    type=click.IntRange(min=0),
    default=3600,
    show_default=True,
    help="Seconds before a hold of a process that kept no heartbeat (an older version) counts as abandoned. Holds of "
    "processes that stopped beating or closed are released at once; a live process's never.",
)
def verify(repair: bool, older_than: int) -> None:
    """Prove every balance equals the sum of its ledger (plus open holds); exit 1 if not."""

    async def operation(engine: AsyncEngine) -> tuple[int, list[accounts.Discrepancy], int]:
        released = await ledger_owners.sweep(engine, older_than) if repair else 0
        return released, await accounts.verify(engine), await accounts.count_open_holds(engine)

    released, problems, open_holds = run(operation)
    if repair:
        click.echo(f"released {released} abandoned hold(s)")
    for p in problems:
        click.echo(
            f"user {p.user_id}: balance {p.balance_nanos} + held {p.held_nanos} != ledger {p.ledger_nanos} (nano-USD)"
        )
    if problems:
        raise SystemExit(1)
    click.echo(f"ledger ok: every balance equals its ledger ({open_holds} hold(s) open)")


def _run_money(operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    try:
        return run(operation)
    except (user_store.UserNotFound, MoneyError) as exc:
        raise click.ClickException(str(exc)) from None
