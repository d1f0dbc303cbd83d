"""`aipower db upgrade`: create or migrate the database schema (Alembic)."""

from __future__ import annotations

import click

from aipower.settings import from_environ
from aipower.storage import db as database


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Create or migrate the schema of AIPOWER_DATABASE_URL."""
    url = from_environ().database_url
    database.upgrade(url, revision)
    click.echo(f"database {database.describe(url)} is at revision {revision}")
