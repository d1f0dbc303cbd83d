"""Holds and their owners' heartbeats: repair releases a dead or closed process's holds soon, never a live one's."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage import accounts, ledger, ledger_owners
from aipower.storage.tables import holds
from aipower.storage.tables import ledger_owners as owners_table
from tests.storage.test_ledger import USD, hold_request, new_account, settlement


async def _backdate(engine: AsyncEngine, hold_id: str, hours: float) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    async with engine.begin() as conn:
        await conn.execute(update(holds).where(holds.c.id == hold_id).values(created_at=old))


async def _silence(engine: AsyncEngine, owner: str, seconds: int) -> None:
    """The owner's last beat `seconds` ago (as if it stopped beating then)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(owners_table).where(owners_table.c.owner == owner).values(seen=owners_table.c.seen - seconds)
        )


async def test_a_live_owners_hold_is_never_abandoned_however_old(engine: AsyncEngine) -> None:
    """A stream may run for hours: repair (even `--older-than 0`) and every sweep leave a live process's hold alone
    (the review's find: repair released it, and the call went free)."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    keeper = ledger_owners.HoldKeeper(engine, book.owner, beat_seconds=60)
    await keeper.start()
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    await _backdate(engine, hold.id, hours=5)
    assert hold.id not in await ledger_owners.abandoned(engine, 60, older_than=0)
    await ledger_owners.sweep(engine, 60, older_than=0)  # (it may release other tests' leftovers: ownerless, by age)
    assert (await accounts.balance(engine, user_id)).held_nanos == 2000
    assert await book.settle(settlement(hold, 300)) == 300
    await book.close()
    await keeper.close()
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD - 300


async def test_a_dead_owners_holds_are_released_by_a_live_process_within_a_few_beats(engine: AsyncEngine) -> None:
    """A process killed mid-call: another live process releases its holds, uncharged, once it missed DEAD_BEATS
    beats, whatever their age (before: only holds older than an hour, and only when a process started)."""
    user_id, key_id = await new_account(engine, "1")
    dead = ledger.SqlLedger(engine)
    await ledger_owners.register(engine, dead.owner)
    hold = await dead.reserve(hold_request(user_id, key_id, 2000))
    await _silence(engine, dead.owner, 10)  # beat 1 s: 10 s without a beat is dead
    live = ledger.SqlLedger(engine)
    keeper = ledger_owners.HoldKeeper(engine, live.owner, beat_seconds=0.05)
    await keeper.start()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await accounts.balance(engine, user_id)).held_nanos == 0:
            break
    await keeper.close()
    await live.close()
    await dead.close()  # its connections (a killed process's would just be gone)
    account = await accounts.balance(engine, user_id)
    assert (account.balance_nanos, account.held_nanos) == (USD, 0)
    assert hold.id not in await ledger_owners.abandoned(engine, 1, older_than=0)
    assert await accounts.verify(engine) == []


async def test_what_a_closed_process_left_open_is_abandoned_at_once(engine: AsyncEngine) -> None:
    """A clean shutdown leaves a hold open only if its release failed: the owner is gone, so no wait for beats."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    keeper = ledger_owners.HoldKeeper(engine, book.owner, beat_seconds=60)
    await keeper.start()
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    assert hold.id not in await ledger_owners.abandoned(engine, 60, older_than=None)
    await keeper.close()
    assert hold.id in await ledger_owners.abandoned(engine, 60, older_than=None)
    await book.close()


async def test_a_hold_whose_owner_kept_no_row_is_judged_by_age(engine: AsyncEngine) -> None:
    """Holds of a process from before the heartbeats (a rolling upgrade): the age rule, as repair worked before."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    assert hold.id not in await ledger_owners.abandoned(engine, 60, older_than=3600)
    assert hold.id not in await ledger_owners.abandoned(engine, 60, older_than=None)  # the sweeps never
    await _backdate(engine, hold.id, hours=2)
    assert hold.id in await ledger_owners.abandoned(engine, 60, older_than=3600)
    await book.close()
