"""The ledger's group commit on both backends: many calls share a transaction, yet each is answered on its own,
a refused reserve spoils nothing else, a hold is settled once, and a caller that goes away leaves no open hold."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import InsufficientCredit
from aipower.gateway.protocols import Hold
from aipower.storage import accounts, db, ledger
from tests.storage.test_ledger import USD, hold_request, new_account, settlement


@pytest.fixture
async def engine(database_url: str) -> AsyncEngine:
    engine = db.make_engine(database_url)
    yield engine  # type: ignore[misc]
    await engine.dispose()


async def test_concurrent_calls_share_transactions_and_stay_exact(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)

    async def call(charge: int) -> int:
        hold = await book.reserve(hold_request(user_id, key_id, 1000))
        return await book.settle(settlement(hold, charge))

    charges = await asyncio.gather(*(call(i) for i in range(100)))
    await book.close()
    assert charges == list(range(100))
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - sum(range(100)), 0)
    assert await accounts.verify(engine) == []


async def test_a_refused_reserve_does_not_spoil_its_batch(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    results = await asyncio.gather(
        book.reserve(hold_request(user_id, key_id, 400)),
        book.reserve(hold_request(user_id, key_id, 2 * USD)),  # more than the balance: 402
        book.reserve(hold_request(user_id, key_id, 600)),
        return_exceptions=True,
    )
    await book.close()
    assert isinstance(results[0], Hold) and isinstance(results[2], Hold)
    assert isinstance(results[1], InsufficientCredit) and results[1].code == "insufficient_credits"
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 1000, 1000)
    assert await accounts.verify(engine) == []


async def test_one_hold_settled_twice_in_one_batch_is_charged_once(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    charges = await asyncio.gather(book.settle(settlement(hold, 300)), book.settle(settlement(hold, 300)))
    await book.close()
    assert sorted(charges) == [0, 300]
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 300, 0)
    assert await accounts.verify(engine) == []


async def test_a_reserve_whose_caller_went_away_leaves_no_open_hold(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    kept = asyncio.create_task(book.reserve(hold_request(user_id, key_id, 100)))
    gone = [asyncio.create_task(book.reserve(hold_request(user_id, key_id, 1000))) for _ in range(5)]
    await asyncio.sleep(0)  # queued (and the first batch maybe already being written): then the callers leave
    for task in gone:
        task.cancel()
    hold = await kept
    await book.close()  # whatever was committed for the cancelled callers has been released by now
    assert all(task.cancelled() for task in gone)
    assert hold.amount == 100
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 100, 100)
    assert await accounts.verify(engine) == []


async def test_close_waits_for_queued_settlements(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    holds = [await book.reserve(hold_request(user_id, key_id, 1000)) for _ in range(3)]
    pending = [asyncio.create_task(book.settle(settlement(h, 10))) for h in holds]
    await asyncio.sleep(0)
    await book.close()
    assert [task.result() for task in pending] == [10, 10, 10]
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 3 * 10, 0)
    assert await accounts.verify(engine) == []
