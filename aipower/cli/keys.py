"""`aipower keys ...`: create, list and revoke API keys."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.cli.params import USD
from aipower.cli.storage import run
from aipower.money import usd_to_nanos
from aipower.storage import keys as key_store
from aipower.storage import users as user_store


@click.group()
def keys() -> None:
    """Manage API keys (stored only as hashes; a new key is shown once)."""


@keys.command("create")
@click.argument("email")
@click.option("--name", default="default", show_default=True, help="A label to tell keys apart.")
def create(email: str, name: str) -> None:
    """Create a key for the user with EMAIL and print it (on stdout, alone)."""

    async def operation(engine: AsyncEngine) -> tuple[str, key_store.KeyRecord]:
        user = await user_store.find(engine, email)
        return await key_store.create(engine, user.id, name)

    try:
        secret, record = run(operation)
    except user_store.UserNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created key {record.id} ({record.name}); it is shown only once:", err=True)
    click.echo(secret)


@keys.command("list")
@click.argument("email")
def list_keys(email: str) -> None:
    """List the keys of the user with EMAIL."""

    async def operation(engine: AsyncEngine) -> list[key_store.KeyRecord]:
        user = await user_store.find(engine, email)
        return await key_store.list_for_user(engine, user.id)

    try:
        records = run(operation)
    except user_store.UserNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'ID':<22} {'NAME':<16} {'KEY':<22} {'CREATED':<20} {'LAST USED':<20} STATUS")
    for r in records:
        status = "revoked" if r.revoked_at else "active"
        click.echo(
            f"{r.id:<22} {r.name:<16} {r.prefix:<22} {_when(r.created_at):<20} {_when(r.last_used_at):<20} {status}"
        )


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key with KEY_ID (as shown by `keys list`)."""
    try:
        run(lambda engine: key_store.revoke(engine, key_id))
    except key_store.KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {key_id}")


def _spend_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    """None for no limit ('none' or not given); else an amount in USD (a bad one is refused: exit status 2)."""
    return None if value in (None, "none") else USD.convert(value, param, ctx)


@keys.command("restrict")
@click.argument("key_id")
@click.option("--expires", default=None, help="Expiry as an ISO date/time in UTC (e.g. 2026-12-31), or 'never'.")
@click.option("--models", default=None, help="Comma-separated model ids the key may use, or 'any'.")
@click.option(
    "--spend-limit", default=None, callback=_spend_limit, help="Lifetime spend limit of the key in USD, or 'none'."
)
def restrict(key_id: str, expires: str | None, models: str | None, spend_limit: Decimal | None) -> None:
    """Set KEY_ID's expiry, allowed models and spend limit (options not given are cleared)."""
    restriction = key_store.KeyRestriction(
        expires_at=_expiry(expires),
        allowed_models=frozenset(m.strip() for m in models.split(",") if m.strip())
        if models and models != "any"
        else None,
        spend_limit_nanos=None if spend_limit is None else usd_to_nanos(spend_limit),
    )
    try:
        run(lambda engine: key_store.restrict(engine, key_id, restriction))
    except key_store.KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restricted {key_id}")


@keys.command("limit")
@click.argument("key_id")
@click.option("--rpm", type=click.IntRange(min=0), default=None, help="Requests per minute (0 = unlimited).")
@click.option("--tpm", type=click.IntRange(min=0), default=None, help="Tokens per minute (0 = unlimited).")
def limit(key_id: str, rpm: int | None, tpm: int | None) -> None:
    """Set KEY_ID's own rate limits (an option not given goes back to the default)."""
    try:
        run(lambda engine: key_store.set_limits(engine, key_id, rpm, tpm))
    except key_store.KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"limits for {key_id}: rpm {_shown(rpm)}, tpm {_shown(tpm)}")


def _shown(value: int | None) -> str:
    return "default" if value is None else ("unlimited" if value == 0 else str(value))


def _expiry(value: str | None) -> dt.datetime | None:
    if value in (None, "never"):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected an ISO date such as 2026-12-31", param_hint="--expires") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]
