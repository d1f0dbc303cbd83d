"""Running a storage coroutine from a CLI command against the configured, migrated database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.settings import from_environ
from aipower.storage import db

T = TypeVar("T")


def run(operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Migrate the database if needed, then run `operation` with an engine on it."""
    url = from_environ().database_url
    db.upgrade(url)
    return asyncio.run(_with_engine(url, operation))


async def _with_engine(url: str, operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    engine = db.make_engine(url)
    try:
        return await operation(engine)
    finally:
        await engine.dispose()
