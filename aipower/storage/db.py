"""Engine creation for SQLite (aiosqlite) and PostgreSQL (asyncpg), and Alembic upgrades. Storage layer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, event, make_url, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")

_MIGRATIONS = Path(__file__).parent / "migrations"


def async_url(url: str) -> URL:
    """The operator's URL with the async driver this project uses (sqlite -> aiosqlite, postgresql -> asyncpg)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///path or postgresql://user@host/db")


def describe(url: str) -> str:
    """The URL without its password, for printing."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        _ensure_parent(target)
        engine = create_async_engine(target, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(target, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _ensure_parent(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Transactions(Protocol):
    """Runs a synchronous function in one transaction (committed when it returns, rolled back if it raises)."""

    async def run(self, work: Callable[[Connection], T]) -> T: ...

    async def close(self) -> None: ...


def transactions(engine: AsyncEngine) -> Transactions:
    """The cheapest way to run one multi-statement transaction on this engine's database.

    SQLite: a plain sqlite3 connection on one dedicated thread, so a transaction is one thread hop (aiosqlite
    hops to its thread once per statement), and `BEGIN IMMEDIATE` takes the write lock up front. PostgreSQL (and
    in-memory SQLite, which a second connection would not see): the async engine, through `run_sync`.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return ThreadTransactions(url.set(drivername="sqlite+pysqlite"))
    return AsyncTransactions(engine)


class AsyncTransactions:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(work)

    async def close(self) -> None:
        return None


class ThreadTransactions:
    def __init__(self, url: URL) -> None:
        self._engine: Engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(self._engine, "connect", _sqlite_writer_connect)
        event.listen(self._engine, "begin", _begin_immediate)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="aipower-sqlite-writer")

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._in_transaction, work)

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return work(conn)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
        self._thread.shutdown(wait=False)


def _sqlite_writer_connect(dbapi_connection: Any, record: Any) -> None:
    # Take transactions out of the sqlite3 module's hands, so `begin` below is the only BEGIN (SQLAlchemy's
    # documented recipe for pysqlite); IMMEDIATE waits for the write lock at the start instead of failing later.
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, record)


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema (Alembic). Synchronous: call it outside a running event loop."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        _ensure_parent(target)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["url"] = target
    command.upgrade(config, revision)


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any driver failure means "not reachable"
        return False
    return True
