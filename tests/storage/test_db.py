"""aipower/storage/db.py: driver URLs, password-free descriptions, idempotent upgrades, ping, SQLite pragmas."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from sqlalchemy import inspect, make_url, text

from aipower.storage import db
from tests.databases import POSTGRES


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///./aipower-data/aipower.db", "sqlite+aiosqlite"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://postgres@127.0.0.1:5432/db", "postgresql+asyncpg"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+asyncpg"),
    ],
)
def test_async_url_picks_the_async_driver(url: str, driver: str) -> None:
    converted = db.async_url(url)
    assert converted.drivername == driver
    assert converted.database == db.async_url(url).database  # the rest of the URL is kept


def test_async_url_keeps_host_user_and_database() -> None:
    converted = db.async_url("postgresql://alice:s3cret@db.internal:6543/gateway")
    assert (converted.username, converted.password, converted.host, converted.port, converted.database) == (
        "alice",
        "s3cret",
        "db.internal",
        6543,
        "gateway",
    )


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle://u@h/db"])
def test_async_url_refuses_other_databases(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported database") as raised:
        db.async_url(url)
    assert "sqlite:///path" in str(raised.value)


def test_describe_hides_the_password() -> None:
    described = db.describe("postgresql://alice:s3cret-pw@db.internal:5432/gateway")
    assert "s3cret-pw" not in described
    assert described == "postgresql://alice:***@db.internal:5432/gateway"
    assert db.describe("sqlite:///./aipower-data/aipower.db") == "sqlite:///./aipower-data/aipower.db"


def _schema(url: str) -> tuple[list[str], list[str]]:
    """Table names and the Alembic revision, read with a throwaway engine."""

    async def read() -> tuple[list[str], list[str]]:
        engine = db.make_engine(url)
        try:
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: sorted(inspect(c).get_table_names()))
                versions = [row[0] for row in await conn.execute(text("SELECT version_num FROM alembic_version"))]
        finally:
            await engine.dispose()
        return tables, versions

    return asyncio.run(read())


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    tables, versions = _schema(database_url)
    assert {"users", "api_keys", "request_log", "alembic_version"} <= set(tables)
    assert len(versions) == 1
    db.upgrade(database_url)
    db.upgrade(database_url)
    assert _schema(database_url) == (tables, versions)


def test_upgrade_creates_a_sqlite_database_and_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "fresh.db"
    db.upgrade(f"sqlite:///{path}")
    assert path.exists()
    tables, versions = _schema(f"sqlite:///{path}")
    assert {"users", "api_keys", "request_log"} <= set(tables)
    assert len(versions) == 1


async def test_ping_a_live_database(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        assert await db.ping(engine) is True
    finally:
        await engine.dispose()


async def test_ping_a_database_that_does_not_exist_is_false() -> None:
    missing = make_url(POSTGRES).set(database="aipower_no_such_database_" + secrets.token_hex(4))
    engine = db.make_engine(missing.render_as_string(hide_password=False))
    try:
        assert await db.ping(engine) is False
    finally:
        await engine.dispose()


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
    finally:
        await engine.dispose()
