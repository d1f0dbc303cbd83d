"""Holds and their owners' heartbeats: repair releases a dead or closed process's holds soon, never a live one's."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import LedgerUnavailable
from aipower.storage import accounts, db, ledger, ledger_owners
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
    assert hold.id not in await ledger_owners.abandoned(engine, older_than=0)
    await ledger_owners.sweep(engine, older_than=0)  # (it may release other tests' leftovers: ownerless, by age)
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
    await ledger_owners.register(engine, dead.owner, 1.0)
    hold = await dead.reserve(hold_request(user_id, key_id, 2000))
    await _silence(engine, dead.owner, 10)  # beat 1 s: dead after 5 s without one
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
    assert hold.id not in await ledger_owners.abandoned(engine, older_than=0)
    assert await accounts.verify(engine) == []


async def test_what_a_closed_process_left_open_is_abandoned_at_once(engine: AsyncEngine) -> None:
    """A clean shutdown leaves a hold open only if its release failed: the owner is gone, so no wait for beats."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    keeper = ledger_owners.HoldKeeper(engine, book.owner, beat_seconds=60)
    await keeper.start()
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    assert hold.id not in await ledger_owners.abandoned(engine, older_than=None)
    await keeper.close()
    assert hold.id in await ledger_owners.abandoned(engine, older_than=None)
    await book.close()


async def test_a_hold_whose_owner_kept_no_row_is_judged_by_age(engine: AsyncEngine) -> None:
    """Holds of a process from before the heartbeats (a rolling upgrade): the age rule, as repair worked before."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    assert hold.id not in await ledger_owners.abandoned(engine, older_than=3600)
    assert hold.id not in await ledger_owners.abandoned(engine, older_than=None)  # the sweeps never
    await _backdate(engine, hold.id, hours=2)
    assert hold.id in await ledger_owners.abandoned(engine, older_than=3600)
    await book.close()


async def test_each_owner_is_judged_by_its_own_beat(engine: AsyncEngine) -> None:
    """A replica beating every 8 s was taken for dead by a peer or a `ledger verify --repair` with a 1 s beat in its
    own environment, and a sub-second beat made every owner dead within the second (the second review's finds)."""
    user_id, key_id = await new_account(engine, "1")
    slow = ledger.SqlLedger(engine)
    await ledger_owners.register(engine, slow.owner, 8.0)  # dead after 33 s
    fast = ledger.SqlLedger(engine)
    await ledger_owners.register(engine, fast.owner, 0.2)  # dead after 2 s
    slow_hold = await slow.reserve(hold_request(user_id, key_id, 1000))
    fast_hold = await fast.reserve(hold_request(user_id, key_id, 1000))
    await _silence(engine, slow.owner, 10)
    live = await ledger_owners.abandoned(engine, older_than=None)
    assert slow_hold.id not in live and fast_hold.id not in live
    await _silence(engine, slow.owner, 30)
    await _silence(engine, fast.owner, 3)
    dead = await ledger_owners.abandoned(engine, older_than=None)
    assert slow_hold.id in dead and fast_hold.id in dead
    await slow.close()
    await fast.close()


async def test_a_process_whose_heartbeat_fails_takes_no_new_hold(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat that hangs (a row lock, a half-open connection) or fails: peers will soon release this process's holds,
    so after FENCE_BEATS beats without a good one its ledger answers 503 instead of serving calls on holds that may
    be gone (the second review served 30 calls on $1 this way)."""
    user_id, key_id = await new_account(engine, "1")

    async def hung(*_: object) -> None:
        await asyncio.sleep(3600)

    owner = ledger.new_owner()
    keeper = ledger_owners.HoldKeeper(engine, owner, beat_seconds=0.05)
    book = ledger.SqlLedger(engine, owner=owner, fenced=keeper.fenced)
    await keeper.start()
    await book.settle(settlement(await book.reserve(hold_request(user_id, key_id, 1000)), 10))
    monkeypatch.setattr(ledger_owners, "beat", hung)
    await asyncio.sleep(0.8)  # no good beat for longer than half its dead_after (2 s): fenced
    with pytest.raises(LedgerUnavailable) as refused:
        await book.reserve(hold_request(user_id, key_id, 1000))
    assert refused.value.status == 503
    monkeypatch.undo()
    await asyncio.sleep(1.5)  # the hung beat times out (after at least 1 s), the next one is good
    await book.settle(settlement(await book.reserve(hold_request(user_id, key_id, 1000)), 10))
    await keeper.close()
    await book.close()


async def test_two_sweeps_of_one_hold_release_it_once(database_url: str, engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    holds_taken = [await book.reserve(hold_request(user_id, key_id, 1000)) for _ in range(20)]
    others = [db.make_engine(database_url) for _ in range(2)]
    try:
        for hold in holds_taken:
            both = await asyncio.gather(*(ledger_owners.release(e, hold.id) for e in others))
            assert sorted(both) == [False, True]
    finally:
        for other in others:
            await other.dispose()
    await book.close()
    assert (await accounts.balance(engine, user_id)).held_nanos == 0
    assert await accounts.verify(engine) == []


async def _open_holds(engine: AsyncEngine, user_id: int) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).where(holds.c.user_id == user_id, holds.c.settled_at.is_(None))
        return int((await conn.execute(query)).scalar_one())


async def test_a_hold_written_while_the_fence_went_up_goes_back(engine: AsyncEngine) -> None:
    """A reserve that passed the fence but finished after it went up (it waited on a lock meanwhile): its hold may be
    released by others any moment, so it goes back and the call gets 503 (the second review's find)."""
    user_id, key_id = await new_account(engine, "1")
    answers = iter([False, True, True, True])
    book = ledger.SqlLedger(engine, fenced=lambda: next(answers, True))
    with pytest.raises(LedgerUnavailable):
        await book.reserve(hold_request(user_id, key_id, 1000))
    await book.close()
    assert await _open_holds(engine, user_id) == 0
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD


async def test_a_fenced_process_takes_no_spare(engine: AsyncEngine) -> None:
    """A lone settle takes its key's next hold (a spare) in memory: not while fenced, when others may release it
    before a call uses it (the second review's find)."""
    user_id, key_id = await new_account(engine, "1")
    fenced = False
    book = ledger.SqlLedger(engine, spares=True, fenced=lambda: fenced)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    await book.settle(settlement(hold, 10))
    assert await _open_holds(engine, user_id) == 1  # not fenced: the spare was taken
    hold = await book.reserve(hold_request(user_id, key_id, 1000))  # runs on it
    fenced = True
    await book.settle(settlement(hold, 10))
    assert await _open_holds(engine, user_id) == 0
    await book.close()
