"""Engine creation for SQLite (aiosqlite) and PostgreSQL (asyncpg), and Alembic upgrades. Storage layer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_

from aipower.storage.batch import AlchemyBatch, BatchConnection, Driver, DriverBatch, Params, Statements
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


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL and in-memory SQLite)."""
    target = async_url(url)
    if target.get_backend_name() != "sqlite" or target.database in (None, "", ":memory:"):
        return None
    return Path(target.database)


def make_engine(url: str, *, ledger: bool = False) -> AsyncEngine:
    """Bound values never appear in a database error's message (hide_parameters): they include key digests and
    e-mail addresses, and such messages reach the log.
    `ledger=True`: the engine for the ledger's writer (SqlLedger), which runs one batch at a time. On PostgreSQL
    its small pool has no pre-ping: SQLAlchemy's pre-ping costs three round trips per checkout, as much as a
    settlement's statements, and DriverTransactions catches a dead connection at BEGIN instead."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        _ensure_parent(target)
        engine = create_async_engine(target, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if ledger:
        return create_async_engine(
            target, pool_size=1, max_overflow=_RECONNECTS - 1, pool_pre_ping=False, hide_parameters=True
        )
    return create_async_engine(target, pool_size=10, max_overflow=20, pool_pre_ping=True, hide_parameters=True)


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
    """Runs a synchronous function in one transaction (committed when it returns, rolled back if it raises).

    `ops`: how many calls the batch serves (a backend may run small batches differently). `durable=False`: the
    commit need not wait for the disk. Its effects are visible to every other transaction at once and its row
    locks are the same; only a database crash right after it may lose it (PostgreSQL: `synchronous_commit = off`
    for that transaction, flushed within about 3 x wal_writer_delay or by the next durable commit, whichever
    comes first). SQLite ignores it: its commits do not fsync either way (WAL, synchronous=NORMAL).
    """

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T: ...

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T | None:
        """Run it synchronously in the caller if this backend can do so without waiting; None if it did not run."""

    async def close(self) -> None: ...


def transactions(engine: AsyncEngine) -> Transactions:
    """The cheapest way to run one multi-statement transaction on this engine's database.

    SQLite: plain sqlite3 connections (storage.sqlite_writer): a small batch runs inline when the write lock is
    free, any other on one writer thread. PostgreSQL: a pooled connection, with the transaction and its
    statements on the asyncpg connection itself (DriverTransactions). Either way statements skip SQLAlchemy's
    per-execute work (storage.batch). In-memory SQLite, which a second connection would not see: the async
    engine, through `run_sync`.
    """
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return DriverTransactions(engine)
    if url.database not in (None, "", ":memory:"):
        return SqliteWriter(url.database)
    return AsyncTransactions(engine)


class AsyncTransactions:
    """Transactions through SQLAlchemy's own execution (in-memory SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T | None:
        return None

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(lambda sync: work(AlchemyBatch(sync)))

    async def close(self) -> None:
        return None


_BEGIN = {True: "BEGIN", False: "BEGIN; SET LOCAL synchronous_commit TO OFF"}  # one round trip either way


class DriverTransactions:
    """PostgreSQL: BEGIN, the statements and COMMIT go to asyncpg directly, on a connection this object keeps (its
    ledger's own), or on one from the engine's pool while the kept one is busy.

    The transaction is not SQLAlchemy's: with asyncpg, `engine.begin()` sends no BEGIN until SQLAlchemy itself
    executes a statement, and none of the batch's statements go through SQLAlchemy. A connection that cannot be
    rolled back is invalidated, so it is never used again inside a transaction. Keeping the connection saves a pool
    checkout and check-in per transaction, which cost more CPU than a lone call's statement.

    A connection the server has closed (a database restart) fails at BEGIN, before anything ran; it is dropped
    and the batch starts again on a fresh connection. So the ledger's engine needs no pre-ping
    (`make_engine(url, ledger=True)`).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._statements = Statements(engine.sync_engine.dialect)  # compiled at first use, once connected
        self._kept: AsyncConnection | None = None
        self._kept_busy = False
        self._closing: set[asyncio.Future[None]] = set()

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T | None:
        return None  # every statement is a network round trip: never without awaiting

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T:
        if not self._kept_busy:
            self._kept_busy = True
            try:
                return await (await self._keep()).run_sync(self._transaction, work, durable)
            except _ClosedBeforeBegin:
                self._drop_kept()
            except BaseException:  # rolled back by _transaction, or invalidated if it could not be: then not kept
                if self._kept is not None and self._kept.invalidated:
                    self._drop_kept()
                raise
            finally:
                self._kept_busy = False
        for _ in range(_RECONNECTS):
            try:
                async with self._engine.connect() as conn:
                    return await conn.run_sync(self._transaction, work, durable)
            except _ClosedBeforeBegin:
                continue
        async with self._engine.connect() as conn:
            return await conn.run_sync(self._transaction, work, durable)

    async def alone(self, statement: Executable, params: Params) -> list[tuple[Any, ...]] | None:
        """The rows of one statement run outside any explicit transaction: the statement is its own (one round trip;
        storage.ledger_alone), sent straight to asyncpg (SQLAlchemy's greenlet costs more CPU than the statement).
        None if the connection turned out to be closed: the caller then runs its batch, which reconnects. An error
        after the statement was sent leaves its outcome unknown; the batch run after it is still safe: a second
        hold is released by repair, and a settled hold is never charged again."""
        return await self._lone(statement, [params], many=False)

    async def alone_many(self, statement: Executable, params: Sequence[Params]) -> list[tuple[Any, ...]] | None:
        """As alone(), for one statement run once per parameter set, pipelined (asyncpg's fetchmany): one round trip,
        and one implicit transaction, so an error rolls back every run. The rows of all runs, in order."""
        return await self._lone(statement, params, many=True)

    async def _lone(self, statement: Executable, params: Sequence[Params], many: bool) -> list[tuple[Any, ...]] | None:
        if self._kept_busy:  # the other group of a batch, or a lone statement whose caller went away
            async with self._engine.connect() as conn:
                return await self._fetch(conn, statement, params, many)
        self._kept_busy = True
        try:
            rows = await self._fetch(await self._keep(), statement, params, many)
        except asyncio.CancelledError:  # the connection's state is unknown: not used again
            self._drop_kept()
            raise
        finally:
            self._kept_busy = False
        if rows is None:
            self._drop_kept()
        return rows

    async def _keep(self) -> AsyncConnection:
        if self._kept is None:
            self._kept = await self._engine.connect()
        return self._kept

    async def _fetch(
        self, conn: AsyncConnection, statement: Executable, params: Sequence[Params], many: bool
    ) -> list[tuple[Any, ...]] | None:
        driver: Driver | None = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        compiled = self._statements.get(statement, ())
        try:
            if many:
                found = await driver.fetchmany(compiled.sql, [compiled.values(p) for p in params])
            else:
                found = await driver.fetch(compiled.sql, *compiled.values(params[0]))
        except Exception as exc:
            if not driver.is_closed():
                raise
            await conn.invalidate(exc)
            return None
        return [tuple(row) for row in found]

    def _drop_kept(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            self._closing.add(task := asyncio.ensure_future(kept.close()))
            task.add_done_callback(self._closing.discard)

    def _transaction(self, sync: Connection, work: Callable[[BatchConnection], T], durable: bool) -> T:
        driver: Driver | None = sync.connection.driver_connection
        assert driver is not None
        began = False
        try:
            await_(driver.execute(_BEGIN[durable]))
            began = True
            result = work(DriverBatch(driver, self._statements))
            if (status := await_(driver.execute("COMMIT"))) != "COMMIT":  # "ROLLBACK": an error was swallowed
                raise RuntimeError(f"the batch's transaction was not committed ({status})")
        except Exception as exc:
            if not began and driver.is_closed():
                sync.invalidate(exc)
                raise _ClosedBeforeBegin from exc
            _roll_back(sync, driver)
            raise
        except BaseException:
            _roll_back(sync, driver)
            raise
        return result

    async def close(self) -> None:
        self._drop_kept()
        await asyncio.gather(*self._closing, return_exceptions=True)


_RECONNECTS = 3  # pooled connections the server may have closed (the ledger engine's pool size + overflow)


class _ClosedBeforeBegin(Exception):
    """The pooled connection was closed by the server before this batch sent anything: safe to run it again."""


def _roll_back(sync: Connection, driver: Driver) -> None:
    """Undo a failed batch; a connection that cannot be rolled back never goes back to the pool."""
    try:
        if driver.is_closed():
            sync.invalidate()
        elif driver.is_in_transaction():
            await_(driver.execute("ROLLBACK"))
    except Exception as exc:  # noqa: BLE001 - the batch's own failure is what the caller gets
        sync.invalidate(exc)
    except BaseException:  # cancelled while rolling back
        sync.invalidate()
        raise


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
