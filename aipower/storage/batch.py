"""One transaction's statements: SQLAlchemy Core compiled once per dialect and run on the driver's own connection
(sqlite3, or asyncpg through SQLAlchemy's greenlet bridge), or through a SQLAlchemy Connection (repair). Storage
layer.

The ledger's statements are built once (ledger_sql) and executed thousands of times a second. SQLAlchemy's
per-execute work (execution context, cache key, result wrapping) cost more than SQLite itself, and on PostgreSQL
it was most of the gateway's CPU per call, so `Statements` compiles each statement once with SQLAlchemy's own
compiler and bind processors for the dialect, and a batch then only binds values on the driver's connection. The
SQL text and the values bound are the ones SQLAlchemy would send, except that on PostgreSQL an expanding
`IN (...)` is sent as `= ANY($n)` with one array parameter (one text for any number of values, so asyncpg
prepares it once).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import await_

Params = Mapping[str, Any]


class BatchConnection(Protocol):
    """The statements a batch needs, on whichever connection runs its transaction. `locks_rows`: the database locks
    rows, not itself (PostgreSQL), so two transactions can deadlock unless they lock in one order (ledger_sql)."""

    @property
    def locks_rows(self) -> bool: ...

    def run(self, statement: Executable, params: Params) -> int:
        """Execute; the number of rows it matched (UPDATE/DELETE)."""

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None: ...

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]: ...


class AlchemyBatch:
    """A BatchConnection on a SQLAlchemy Connection (repair, and in-memory SQLite through run_sync)."""

    __slots__ = ("_conn", "locks_rows")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.locks_rows = conn.dialect.name == "postgresql"

    def run(self, statement: Executable, params: Params) -> int:
        return int(self._conn.execute(statement, dict(params)).rowcount)

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        self._conn.execute(statement, [dict(row) for row in rows])

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(statement, dict(params))]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as the driver's text: the bind names in placeholder order, and how to turn each value into SQL."""

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]  # literal values inside the statement (e.g. the 0 of a CASE)
    processors: Mapping[str, Callable[[Any], Any]]
    expanding: str | None  # qmark: an `IN (...)` bind, one placeholder per value spliced in at run time

    def values(self, params: Params) -> tuple[Any, ...]:
        out: list[Any] = []
        for name in self.names:
            value = params[name] if name in params else self.fixed[name]
            if name == self.expanding:
                out.extend(value)
                continue
            processor = self.processors.get(name)
            out.append(value if processor is None or value is None else processor(value))
        return tuple(out)

    def text(self, params: Params) -> str:
        if self.expanding is None:
            return self.sql
        count = len(params[self.expanding])
        return self.sql.replace(f"__[POSTCOMPILE_{self.expanding}]", ", ".join("?" * count))


class Statements:
    """Compiled statements for one dialect (SQLite's qmark `?` or asyncpg's numeric `$1`), cached per statement
    (and per column set, for INSERTs). One per Transactions object."""

    def __init__(self, dialect: Dialect) -> None:
        assert dialect.paramstyle in ("qmark", "numeric_dollar"), dialect.paramstyle
        self._dialect = dialect
        self._cache: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Compiled]] = {}

    def get(self, statement: Executable, keys: tuple[str, ...]) -> _Compiled:
        slot = (id(statement), keys)
        cached = self._cache.get(slot)
        if cached is not None and cached[0] is statement:
            return cached[1]
        compiled = self._compile(statement, keys)
        self._cache[slot] = (statement, compiled)  # the statement is kept, so its id() is never reused
        return compiled

    def _compile(self, statement: Executable, keys: tuple[str, ...]) -> _Compiled:
        assert isinstance(statement, ClauseElement)
        compiled = statement.compile(dialect=self._dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        sql, names = compiled.string, tuple(compiled.positiontup or ())
        binds = {name: compiled.binds[name] for name in names}
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in binds.items():
            processor = bind.type.dialect_impl(self._dialect).bind_processor(self._dialect)
            if processor is not None:
                processors[name] = processor
        expanding = [name for name, bind in binds.items() if bind.expanding]
        assert len(expanding) <= 1, expanding
        if expanding and self._dialect.paramstyle == "numeric_dollar":
            sql, names = _as_array(sql, names, expanding[0])
            if expanding[0] in processors:
                processors[expanding[0]] = _each(processors[expanding[0]])
            expanding = []
        return _Compiled(
            sql=sql,
            names=names,
            fixed={name: bind.value for name, bind in binds.items() if not bind.required},
            processors=processors,
            expanding=expanding[0] if expanding else None,
        )


def _as_array(sql: str, names: tuple[str, ...], expanding: str) -> tuple[str, tuple[str, ...]]:
    """`x IN (__[POSTCOMPILE_ids])` as `x = ANY($n)`: numeric binds are numbered in `names` order without the
    expanding one (SQLAlchemy numbers its values after all others), so it becomes the last parameter."""
    marker = f" IN (__[POSTCOMPILE_{expanding}])"
    assert sql.count(marker) == 1 and f" NOT{marker}" not in sql and names.count(expanding) == 1, sql
    names = (*(name for name in names if name != expanding), expanding)
    sql = sql.replace(marker, f" = ANY(${len(names)})")
    numbers = {int(n) for n in re.findall(r"\$(\d+)", sql)}
    assert numbers == set(range(1, len(names) + 1)), sql  # one $n per name, in `names` order
    return sql, names


def _each(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda values: [None if value is None else processor(value) for value in values]


class SqliteBatch:
    """A BatchConnection on a plain sqlite3 connection inside its transaction."""

    __slots__ = ("_cursor", "_statements")
    locks_rows = False  # one writer at a time: BEGIN IMMEDIATE takes the database's write lock

    def __init__(self, connection: sqlite3.Connection, statements: Statements) -> None:
        self._cursor = connection.cursor()
        self._statements = statements

    def run(self, statement: Executable, params: Params) -> int:
        compiled = self._statements.get(statement, ())
        return self._cursor.execute(compiled.text(params), compiled.values(params)).rowcount

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        if not rows:
            return
        compiled = self._statements.get(statement, tuple(rows[0]))
        self._cursor.executemany(compiled.sql, [compiled.values(row) for row in rows])

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]:
        compiled = self._statements.get(statement, ())
        return list(self._cursor.execute(compiled.text(params), compiled.values(params)))


class Driver(Protocol):
    """The part of an asyncpg connection a batch uses (asyncpg ships no type information)."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchmany(self, query: str, args: Iterable[Sequence[Any]]) -> list[Any]: ...

    def is_in_transaction(self) -> bool: ...

    def is_closed(self) -> bool: ...


class DriverBatch:
    """A BatchConnection on an asyncpg connection inside its transaction, from synchronous code that SQLAlchemy's
    greenlet bridge runs (`AsyncConnection.run_sync`): each statement is awaited with `await_`. asyncpg prepares
    each statement text once per connection (its statement cache) and then only binds values."""

    __slots__ = ("_driver", "_statements")
    locks_rows = True

    def __init__(self, driver: Driver, statements: Statements) -> None:
        self._driver = driver
        self._statements = statements

    def run(self, statement: Executable, params: Params) -> int:
        compiled = self._statements.get(statement, ())
        status = await_(self._driver.execute(compiled.sql, *compiled.values(params)))
        return int(status.rpartition(" ")[2])  # "UPDATE 1", "INSERT 0 1"

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        if not rows:
            return
        compiled = self._statements.get(statement, tuple(rows[0]))
        await_(self._driver.executemany(compiled.sql, [compiled.values(row) for row in rows]))

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]:
        compiled = self._statements.get(statement, ())
        return [tuple(row) for row in await_(self._driver.fetch(compiled.sql, *compiled.values(params)))]
