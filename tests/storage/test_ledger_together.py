"""PostgreSQL under load: a batch's paid settles and reserves go as two pipelines of the lone-call statements (one
round trip and one transaction each), never through the general batch, and stay exact to the unit; a group that a
key's spend limit rolls back goes to the general batch, which answers each call; two processes' groups over the
same users in opposite orders both commit (test_ledger_lock_order)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from aipower.errors import InsufficientCredit
from aipower.storage import accounts, db, keys, ledger, ledger_sql
from aipower.storage.batch import Params
from aipower.storage.tables import api_keys
from tests.storage.test_ledger import USD, hold_request, new_account, settlement


@pytest.fixture
def postgres(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name != "postgresql":
        pytest.skip("the pipelined statements are PostgreSQL's (SQLite commits a batch in-process)")
    return engine


async def test_paid_calls_under_load_go_together_and_stay_exact(
    postgres: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    general: list[int] = []
    run_batch = ledger_sql.run_batch

    def recording_batch(conn: Any, settles: Sequence[Any], reserves: Sequence[Any], spares: Any = ()) -> Any:
        general.append(len(settles) + len(reserves))
        return run_batch(conn, settles, reserves, spares)

    monkeypatch.setattr(ledger, "run_batch", recording_batch)
    groups = record_groups(monkeypatch)
    user_id, key_id = await new_account(postgres, "1")
    book = ledger.SqlLedger(postgres)

    async def call(charge: int) -> int:
        hold = await book.reserve(hold_request(user_id, key_id, 1000))
        await asyncio.sleep(0)
        return await book.settle(settlement(hold, charge))

    charges = await asyncio.gather(*(call(i * 10) for i in range(60)))
    await book.close()
    assert charges == [i * 10 for i in range(60)]
    assert general == []  # not one call needed the general batch
    assert max(groups) > 1  # calls went together
    balance = await accounts.balance(postgres, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - sum(i * 10 for i in range(60)), 0)
    assert await spent(postgres, key_id) == sum(i * 10 for i in range(60))
    assert await accounts.verify(postgres) == []


async def test_a_group_a_key_limit_rolls_back_is_answered_call_by_call(
    postgres: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, key_id = await new_account(postgres, "1")
    await keys.restrict(postgres, key_id, keys.KeyRestriction(spend_limit_nanos=1500))
    book = ledger.SqlLedger(postgres)
    await book.reserve(hold_request(user_id, key_id, 100))  # a call in flight: the next ones are queued, not alone
    groups = record_groups(monkeypatch)
    # Sent together, the third would pass the key's limit: the function rolls the group back, and the general batch
    # answers each call.
    results = await asyncio.gather(
        *(book.reserve(hold_request(user_id, key_id, amount)) for amount in (500, 700, 700)), return_exceptions=True
    )
    await book.close()
    assert groups == [3]
    assert [type(r).__name__ for r in results] == ["Hold", "Hold", "InsufficientCredit"]
    refused = results[2]
    assert isinstance(refused, InsufficientCredit) and refused.code == "key_spend_limit_reached"
    assert (await accounts.balance(postgres, user_id)).held_nanos == 1300
    assert await spent(postgres, key_id) == 1300
    assert await accounts.verify(postgres) == []


def record_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group of statements sent together from now on."""
    groups: list[int] = []
    alone_many = db.DriverTransactions.alone_many

    async def recording(self: db.DriverTransactions, statement: Executable, params: Sequence[Params]) -> Any:
        groups.append(len(params))
        return await alone_many(self, statement, params)

    monkeypatch.setattr(db.DriverTransactions, "alone_many", recording)
    return groups


async def spent(engine: AsyncEngine, key_id: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(api_keys.c.spent_nanos).where(api_keys.c.id == key_id))).scalar_one())
