"""Fixtures shared by the storage tests: an engine on the session's database (SQLite and PostgreSQL), and a fresh
Redis key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage import db
from tests.redis_service import new_prefix, prefix_cleanup, require_redis


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh Redis key prefix for one test; its keys are deleted afterwards."""
    require_redis()
    with prefix_cleanup(new_prefix()) as value:
        yield value


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = db.make_engine(database_url)
    yield made
    await made.dispose()
