"""`aipower users ...`: manage user accounts."""

from __future__ import annotations

from pathlib import Path

import click

from aipower.cli.params import catalog_option, load_catalog
from aipower.cli.storage import run
from aipower.storage import users as user_store


@click.group()
def users() -> None:
    """Manage users (accounts that own API keys)."""


@users.command("create")
@click.argument("email")
@catalog_option
def create(email: str, catalog_paths: tuple[Path, ...]) -> None:
    """Create a user with this EMAIL."""
    if "@" not in email:
        raise click.BadParameter("expected an email address", param_hint="EMAIL")
    trial_calls = load_catalog(catalog_paths).billing.trial_calls
    try:
        user = run(lambda engine: user_store.create(engine, email, trial_calls))
    except user_store.UserExists as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created user {user.id} <{user.email}> with {trial_calls} free trial calls")


@users.command("limit")
@click.argument("email")
@click.option("--rpm", type=click.IntRange(min=0), default=None, help="Requests per minute (0 = unlimited).")
@click.option("--tpm", type=click.IntRange(min=0), default=None, help="Tokens per minute (0 = unlimited).")
def limit(email: str, rpm: int | None, tpm: int | None) -> None:
    """Set the rate limits of a user, across all their keys (an option not given goes back to the default)."""
    try:
        run(lambda engine: user_store.set_limits(engine, email, rpm, tpm))
    except user_store.UserNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"limits for {email}: rpm {rpm if rpm is not None else 'default'}, tpm {tpm if tpm is not None else 'default'}"
    )
