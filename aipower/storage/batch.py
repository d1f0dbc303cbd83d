"""One transaction's statements: SQLAlchemy Core compiled once for SQLite and run on a plain sqlite3 connection, or
run through a SQLAlchemy Connection (PostgreSQL, repair). Storage layer.

The ledger's statements are built once (ledger_sql) and executed thousands of times a second. On SQLite the
per-execute work of SQLAlchemy (execution context, cache key, result wrapping) cost more than SQLite itself, so
`SqliteBatch` compiles each statement once with SQLAlchemy's own compiler and bind processors and then only binds
values on a `sqlite3.Cursor`. The SQL text and the values bound are the ones SQLAlchemy would send.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

Params = Mapping[str, Any]


class BatchConnection(Protocol):
    """The statements a batch needs, on whichever connection runs its transaction."""

    def run(self, statement: Executable, params: Params) -> int:
        """Execute; the number of rows it matched (UPDATE/DELETE)."""

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None: ...

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]: ...


class AlchemyBatch:
    """A BatchConnection on a SQLAlchemy Connection (PostgreSQL through run_sync; repair on any backend)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def run(self, statement: Executable, params: Params) -> int:
        return int(self._conn.execute(statement, dict(params)).rowcount)

    def run_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        self._conn.execute(statement, [dict(row) for row in rows])

    def fetch(self, statement: Executable, params: Params) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(statement, dict(params))]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as SQLite text: the bind names in placeholder order, and how to turn each value into SQL."""

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]  # literal values inside the statement (e.g. the 0 of a CASE)
    processors: Mapping[str, Callable[[Any], Any]]
    expanding: str | None  # an `IN (...)` bind: one placeholder per value, spliced in at run time

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


class SqliteStatements:
    """Compiled statements, cached per statement (and per column set, for INSERTs). One per writer connection."""

    def __init__(self) -> None:
        self._dialect = sqlite.dialect()
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
        names = tuple(compiled.positiontup or ())
        binds = {name: compiled.binds[name] for name in names}
        processors = {}
        for name, bind in binds.items():
            processor = bind.type.dialect_impl(self._dialect).bind_processor(self._dialect)
            if processor is not None:
                processors[name] = processor
        expanding = [name for name, bind in binds.items() if bind.expanding]
        return _Compiled(
            sql=compiled.string,
            names=names,
            fixed={name: bind.value for name, bind in binds.items() if not bind.required},
            processors=processors,
            expanding=expanding[0] if expanding else None,
        )


class SqliteBatch:
    """A BatchConnection on a plain sqlite3 connection inside its transaction."""

    __slots__ = ("_cursor", "_statements")

    def __init__(self, connection: sqlite3.Connection, statements: SqliteStatements) -> None:
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
