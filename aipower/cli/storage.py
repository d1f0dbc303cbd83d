"""Running a storage coroutine from a CLI command against the configured, migrated database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.settings import from_environ
from aipower.storage import db

T = TypeVar("T")


def run(operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Migrate the database if needed, then run `operation` with an engine on it. A SQLite file that is not there yet
    is created, and the command says so on stderr: a misspelt AIPOWER_DATABASE_URL would otherwise put a user or a
    top-up into a new, empty database without a word."""
    url = from_environ().database_url
    new_file = db.sqlite_file(url)
    if new_file is not None and new_file.exists():
        new_file = None
    db.upgrade(url)
    if new_file is not None:
        click.echo(f"note: created a new database at {new_file} (AIPOWER_DATABASE_URL)", err=True)
    return asyncio.run(_with_engine(url, operation))


async def _with_engine(url: str, operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    engine = db.make_engine(url)
    try:
        return await operation(engine)
    finally:
        await engine.dispose()
