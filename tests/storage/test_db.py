"""aipower/storage/db.py: driver URLs, password-free descriptions, idempotent upgrades, ping, SQLite pragmas, and
transactions that roll back cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import pytest
from sqlalchemy import bindparam, func, inspect, make_url, select, text, update

from aipower.storage import db, users
from aipower.storage.batch import BatchConnection
from aipower.storage.tables import users as users_table
from tests.databases import POSTGRES

BACKEND_PID = select(func.pg_backend_pid())


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


@pytest.mark.parametrize("ledger", [False, True])
async def test_a_database_error_does_not_show_the_values_bound(database_url: str, ledger: bool) -> None:
    """Database errors reach the log; the values of their statements (key digests, e-mail addresses) must not."""
    secret = "digest-" + secrets.token_hex(16)
    engine = db.make_engine(database_url, ledger=ledger)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as caught:
                await conn.execute(text("SELECT id FROM no_such_table WHERE digest = :d"), {"d": secret})
    finally:
        await engine.dispose()
    assert "no_such_table" in str(caught.value)
    assert secret not in str(caught.value)


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


async def test_a_failed_transaction_writes_nothing_and_leaves_its_connection_clean(database_url: str) -> None:
    """On PostgreSQL the batch's BEGIN/ROLLBACK are sent on the asyncpg connection itself: after a failure (here a
    broken CHECK constraint) the pooled connection is back out of any transaction, and is reused."""
    engine = db.make_engine(database_url)
    ledger_engine = db.make_engine(database_url, ledger=True)  # no pre-ping: nothing would hide a dirty connection
    runner = db.transactions(ledger_engine)
    postgres = database_url.startswith("postgresql")
    try:
        user = await users.create(engine, f"tx-{secrets.token_hex(4)}@example.com", 0)
        where = users_table.c.id == bindparam("p_uid")
        set_trials = update(users_table).where(where).values(trial_calls_left=bindparam("p_n"))
        overdraw = update(users_table).where(where).values(balance_nanos=-1)
        trials = select(users_table.c.trial_calls_left).where(where)

        def failing(conn: BatchConnection) -> None:
            assert conn.run(set_trials, {"p_uid": user.id, "p_n": 5}) == 1
            conn.run(overdraw, {"p_uid": user.id})  # balance_nanos >= 0: the database refuses

        before = await runner.run(lambda conn: conn.fetch(BACKEND_PID, {})) if postgres else None
        for durable in (True, False):
            with pytest.raises(Exception, match="ck_users_balance_nonnegative"):
                await runner.run(failing, durable=durable)
            assert await runner.run(lambda conn: conn.fetch(trials, {"p_uid": user.id})) == [(0,)]
        assert await runner.run(lambda conn: conn.run(set_trials, {"p_uid": user.id, "p_n": 2}), durable=False) == 1
        assert await runner.run(lambda conn: conn.fetch(trials, {"p_uid": user.id})) == [(2,)]
        if postgres:  # the same server connection all along: rolled back and reused, not replaced
            assert await runner.run(lambda conn: conn.fetch(BACKEND_PID, {})) == before
    finally:
        await runner.close()
        await ledger_engine.dispose()
        await engine.dispose()


async def test_a_transaction_whose_error_was_swallowed_is_not_reported_committed(database_url: str) -> None:
    engine = db.make_engine(database_url)
    runner = db.transactions(engine)
    try:
        user = await users.create(engine, f"tx-{secrets.token_hex(4)}@example.com", 0)
        where = users_table.c.id == bindparam("p_uid")

        def swallowing(conn: BatchConnection) -> None:
            conn.run(update(users_table).where(where).values(trial_calls_left=7), {"p_uid": user.id})
            with contextlib.suppress(Exception):
                conn.run(update(users_table).where(where).values(balance_nanos=-1), {"p_uid": user.id})

        if database_url.startswith("postgresql"):  # the failed statement aborted the transaction: nothing commits
            with pytest.raises(RuntimeError, match="not committed"):
                await runner.run(swallowing)
            expected = 0
        else:  # SQLite undoes only the failed statement
            await runner.run(swallowing)
            expected = 7
        trials = select(users_table.c.trial_calls_left).where(where)
        assert await runner.run(lambda conn: conn.fetch(trials, {"p_uid": user.id})) == [(expected,)]
    finally:
        await runner.close()
        await engine.dispose()


async def test_a_ledger_connection_closed_by_the_server_is_replaced(database_url: str) -> None:
    """A database restart closes every pooled connection: the next batch finds its connection dead at BEGIN, before
    anything ran, and runs on a fresh one instead of failing the calls in it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to close connections")
    engine = db.make_engine(database_url)
    ledger_engine = db.make_engine(database_url, ledger=True)  # as the app builds it: no pre-ping
    runner = db.transactions(ledger_engine)
    try:
        user = await users.create(engine, f"tx-{secrets.token_hex(4)}@example.com", 0)
        where = users_table.c.id == bindparam("p_uid")
        set_trials = update(users_table).where(where).values(trial_calls_left=bindparam("p_n"))
        first = (await runner.run(lambda conn: conn.fetch(BACKEND_PID, {})))[0][0]
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        await asyncio.sleep(0.2)  # the server's close reaches the pooled connection
        assert await runner.run(lambda conn: conn.run(set_trials, {"p_uid": user.id, "p_n": 4})) == 1
        second = (await runner.run(lambda conn: conn.fetch(BACKEND_PID, {})))[0][0]
        assert second != first
        async with engine.connect() as conn:
            stored = await conn.execute(select(users_table.c.trial_calls_left).where(where), {"p_uid": user.id})
            assert stored.scalar_one() == 4
    finally:
        await runner.close()
        await ledger_engine.dispose()
        await engine.dispose()
