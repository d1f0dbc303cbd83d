"""Read-only views for callers: balance, usage aggregates, one generation. Implements gateway AccountReader."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from sqlalchemy import ColumnElement, Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.gateway.protocols import Balance, LogEntry, UsageRow
from aipower.storage import accounts
from aipower.storage.request_log import entry_columns, entry_of
from aipower.storage.tables import request_log

r = request_log.c


class SqlAccountReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def balance(self, user_id: int) -> Balance:
        return await accounts.balance(self._engine, user_id)

    async def usage(
        self, user_id: int, start: dt.datetime, end: dt.datetime, group_by: Literal["model", "day"]
    ) -> list[UsageRow]:
        key = r.model if group_by == "model" else _day(self._engine.dialect.name)
        query = (
            select(
                key.label("group"),
                func.count(),
                func.coalesce(func.sum(r.input_tokens), 0),
                func.coalesce(func.sum(r.output_tokens), 0),
                func.coalesce(func.sum(r.charged_nanos), 0),
            )
            .where(r.user_id == user_id, r.created_at >= start, r.created_at < end, r.billing_mode.is_not(None))
            .group_by(key)
            .order_by(key)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [UsageRow(str(g), int(c), int(i), int(o), int(cost)) for g, c, i, o, cost in rows]

    async def generation(self, user_id: int, request_id: str) -> LogEntry | None:
        if "\x00" in request_id:  # no id holds one, and PostgreSQL refuses it in a query: simply not found
            return None
        query = select(*entry_columns()).where(r.request_id == request_id, r.user_id == user_id).limit(1)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else entry_of(row)


def _day(dialect: str) -> ColumnElement[Any]:
    """The UTC day of a row (SQLite stores UTC text; PostgreSQL sessions here run in UTC)."""
    return func.date(r.created_at) if dialect == "sqlite" else cast(func.timezone("UTC", r.created_at), Date)
