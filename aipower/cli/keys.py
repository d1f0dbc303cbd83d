"""`aipower keys ...`: create, list and revoke API keys."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.cli.storage import run
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


def _when(value: object) -> str:
    return "-" if value is None else str(value)[:19]
