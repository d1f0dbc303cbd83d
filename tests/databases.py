"""Fresh test databases: a SQLite file, or a new PostgreSQL database dropped afterwards.

PostgreSQL comes from AIPOWER_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test). When it is
unreachable the PostgreSQL half of the suite is skipped locally and fails on CI (CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url

from aipower.storage import db

POSTGRES = os.environ.get("AIPOWER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty database URL for `backend` ("sqlite" or "postgresql")."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'aipower.db'}"
        db.upgrade(url)
        yield url
        return
    name = "aipower_test_" + secrets.token_hex(6)
    admin = make_url(POSTGRES)
    try:
        asyncio.run(_admin(admin.render_as_string(hide_password=False), f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES} is required on CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {exc}")
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        db.upgrade(url)
        yield url
    finally:
        asyncio.run(
            _admin(admin.render_as_string(hide_password=False), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
