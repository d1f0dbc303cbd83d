"""Test helpers for billing: run storage operations on a database URL and read accounts back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower import catalog as catalog_file
from aipower.gateway.protocols import Balance
from aipower.storage import accounts, db
from aipower.storage import users as user_store
from aipower.storage.tables import ledger, request_log

T = TypeVar("T")
RULES = catalog_file.load().billing


def on(database_url: str, operation: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = db.make_engine(database_url)
        try:
            return await operation(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def user_id(database_url: str, email: str) -> int:
    async def find(engine: AsyncEngine) -> int:
        return (await user_store.find(engine, email)).id

    return on(database_url, find)


def balance_of(database_url: str, email: str) -> Balance:
    uid = user_id(database_url, email)
    return on(database_url, lambda engine: accounts.balance(engine, uid))


def top_up(database_url: str, email: str, usd: str) -> int:
    uid = user_id(database_url, email)
    return on(database_url, lambda engine: accounts.top_up(engine, uid, Decimal(usd), RULES, None))


def grant(database_url: str, email: str, usd: str) -> int:
    uid = user_id(database_url, email)
    return on(database_url, lambda engine: accounts.grant(engine, uid, Decimal(usd), None))


def ledger_rows(database_url: str, email: str) -> list[tuple[int, str]]:
    uid = user_id(database_url, email)

    async def rows(engine: AsyncEngine) -> list[tuple[int, str]]:
        query = select(ledger.c.amount_nanos, ledger.c.reason).where(ledger.c.user_id == uid).order_by(ledger.c.id)
        async with engine.connect() as conn:
            return [(int(a), str(r)) for a, r in (await conn.execute(query)).all()]

    return on(database_url, rows)


def billed_calls(database_url: str, email: str) -> int:
    uid = user_id(database_url, email)

    async def count(engine: AsyncEngine) -> int:
        query = select(func.count()).select_from(request_log).where(request_log.c.user_id == uid)
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    return on(database_url, count)


def verify(database_url: str) -> list[accounts.Discrepancy]:
    return on(database_url, accounts.verify)
