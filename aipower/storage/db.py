"""Engine creation for SQLite (aiosqlite) and PostgreSQL (asyncpg), and Alembic upgrades. Storage layer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from aipower.storage.batch import AlchemyBatch, BatchConnection
from aipower.storage.sqlite_writer import SqliteWriter

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

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1) -> T:
        """`ops`: how many calls the batch serves (a backend may run small batches differently)."""

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1) -> T | None:
        """Run it synchronously in the caller if this backend can do so without waiting; None if it did not run."""

    async def close(self) -> None: ...


def transactions(engine: AsyncEngine) -> Transactions:
    """The cheapest way to run one multi-statement transaction on this engine's database.

    SQLite: plain sqlite3 connections (storage.sqlite_writer): a small batch runs inline when the write lock is
    free, any other on one writer thread; statements skip SQLAlchemy's per-execute work (storage.batch).
    PostgreSQL (and in-memory SQLite, which a second connection
    would not see): the async engine, through `run_sync`.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return SqliteWriter(url.database)
    return AsyncTransactions(engine)


class AsyncTransactions:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1) -> T | None:
        return None  # every statement is a network round trip: never without awaiting

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(lambda sync: work(AlchemyBatch(sync)))

    async def close(self) -> None:
        return None


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema (Alembic). Synchronous: call it outside a running event loop."""
    # Imported here: alembic (and mako) cost ~11 MiB that a serving process never needs (serve migrates in a child).
    from alembic import command
    from alembic.config import Config

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
