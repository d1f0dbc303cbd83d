"""The ledger on both backends: no overspend under concurrency, settle exactly once, verify and repair."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower import catalog as catalog_file
from aipower import money
from aipower.errors import InsufficientCredit, PermissionDenied
from aipower.gateway.protocols import Hold, HoldRequest, LogEntry, Settlement
from aipower.storage import accounts, db, keys, ledger, ledger_owners, users
from aipower.storage.tables import holds, request_log

RULES = catalog_file.load().billing
USD = 1_000_000_000


async def new_account(engine: AsyncEngine, usd: str | None = None, trial_calls: int = 0) -> tuple[int, str]:
    user = await users.create(engine, f"ledger-{secrets.token_hex(4)}@example.com", trial_calls)
    _, record = await keys.create(engine, user.id, "k")
    if usd is not None:
        await accounts.grant(engine, user.id, Decimal(usd), "test")
    return user.id, record.id


def hold_request(user_id: int, key_id: str, amount: int, trial: bool = False, unlock: int | None = None) -> HoldRequest:
    return HoldRequest(user_id, key_id, "req-" + secrets.token_hex(4), amount, trial, unlock)


def settlement(hold: Hold, charge: int, succeeded: bool = True) -> Settlement:
    entry = LogEntry("req-" + secrets.token_hex(4), hold.key_id, hold.user_id, "deepseek/deepseek-chat", "deepseek",
                     False, 200, None, 10, 10, 0, 0, 5, 1, dt.datetime.now(dt.UTC))  # fmt: skip
    return Settlement(hold, charge, succeeded, entry)


async def test_parallel_reserves_never_overspend(database_url: str) -> None:
    engines = [db.make_engine(database_url) for _ in range(2)]  # two pools, like two processes
    try:
        user_id, key_id = await new_account(engines[0], "1")
        amount = USD // 7  # 7 fit, with a remainder

        async def attempt(i: int) -> bool:
            book = ledger.SqlLedger(engines[i % 2])
            try:
                await book.reserve(hold_request(user_id, key_id, amount))
            except InsufficientCredit:
                return False
            finally:
                await book.close()
            return True

        admitted = await asyncio.gather(*(attempt(i) for i in range(60)))
        assert sum(admitted) == 7
        balance = await accounts.balance(engines[0], user_id)
        assert balance.balance_nanos == USD - 7 * amount >= 0
        assert await accounts.verify(engines[0]) == []
    finally:
        for e in engines:
            await e.dispose()


async def test_settle_charges_once_and_releases_the_rest(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    assert await book.settle(settlement(hold, 300)) == 300
    assert await book.settle(settlement(hold, 300)) == 0  # a second settle is a no-op
    await book.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 300, 0)
    assert await accounts.verify(engine) == []


async def test_a_charge_above_the_hold_takes_only_what_the_balance_has(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "0.000001")  # 1000 nanos
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 600))
    assert await book.settle(settlement(hold, 5000)) == 1000  # 600 held + the 400 left; the rest is written off
    await book.close()
    assert (await accounts.balance(engine, user_id)).balance_nanos == 0
    assert await accounts.verify(engine) == []


async def test_trial_calls_are_used_first_and_refunded_when_the_call_fails(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, None, trial_calls=1)
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000, trial=True))
    assert hold.mode == "trial" and hold.amount == 0
    assert await book.settle(settlement(hold, 0, succeeded=False)) == 0
    assert (await accounts.balance(engine, user_id)).trial_calls_left == 1
    hold = await book.reserve(hold_request(user_id, key_id, 1000, trial=True))
    await book.settle(settlement(hold, 5000))
    assert (await accounts.balance(engine, user_id)).trial_calls_left == 0
    with pytest.raises(InsufficientCredit):
        await book.reserve(hold_request(user_id, key_id, 1000, trial=True))
    await book.close()


async def test_premium_needs_lifetime_topups(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "100")  # a grant does not unlock
    book = ledger.SqlLedger(engine)
    with pytest.raises(PermissionDenied):
        await book.reserve(hold_request(user_id, key_id, 10, unlock=5 * USD))
    await accounts.top_up(engine, user_id, Decimal(5), RULES, None)
    await book.reserve(hold_request(user_id, key_id, 10, unlock=5 * USD))
    await book.close()


async def test_topup_bonuses_are_ledger_rows(engine: AsyncEngine) -> None:
    user_id, _ = await new_account(engine)
    assert await accounts.top_up(engine, user_id, Decimal(100), RULES, None) == 100 * USD + USD + 20 * USD
    assert await accounts.top_up(engine, user_id, Decimal(5), RULES, None) == 5 * USD  # no second first-bonus
    balance = await accounts.balance(engine, user_id)
    assert balance.lifetime_topup_nanos == 105 * USD
    assert await accounts.verify(engine) == []


async def test_first_top_ups_made_at_once_earn_the_first_bonus_once(database_url: str, engine: AsyncEngine) -> None:
    """Two operators (two processes) top the same new user up at the same moment: one of them is the first."""
    user_id, _ = await new_account(engine)
    others = [db.make_engine(database_url) for _ in range(4)]
    try:
        credited = await asyncio.gather(*(accounts.top_up(e, user_id, Decimal(5), RULES, None) for e in others))
    finally:
        for other in others:
            await other.dispose()
    assert sorted(credited) == [5 * USD] * 3 + [6 * USD]  # one first-bonus of 100 credits ($1)
    assert (await accounts.balance(engine, user_id)).balance_nanos == 21 * USD
    assert await accounts.verify(engine) == []


async def test_a_balance_never_passes_what_the_ledger_holds(engine: AsyncEngine) -> None:
    """Past a 64-bit integer SQLite would store an inexact float and PostgreSQL would fail: refused, exact."""
    user_id, _ = await new_account(engine)
    with pytest.raises(money.MoneyError, match="at a time"):
        await accounts.grant(engine, user_id, Decimal(10) ** 10, None)
    for _ in range(9):
        await accounts.grant(engine, user_id, Decimal(10) ** 9, None)
    with pytest.raises(money.MoneyError, match="largest amount"):
        await accounts.grant(engine, user_id, Decimal(10) ** 9, None)
    assert (await accounts.balance(engine, user_id)).balance_nanos == 9 * 10**18
    assert await accounts.verify(engine) == []


async def test_repair_releases_abandoned_holds_without_charging(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    await book.close()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    async with engine.begin() as conn:
        await conn.execute(update(holds).where(holds.c.id == hold.id).values(created_at=old))
    assert await accounts.verify(engine) == []  # an open hold is accounted for
    stale = await ledger_owners.abandoned(engine, older_than=3600)  # its ledger kept no heartbeat: by age
    assert hold.id in stale
    assert await ledger_owners.release(engine, hold.id) is True
    assert await ledger_owners.release(engine, hold.id) is False
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD
    assert await accounts.verify(engine) == []


@pytest.mark.parametrize("spares", [False, True])
async def test_a_call_whose_hold_repair_released_is_still_charged_and_logged(engine: AsyncEngine, spares: bool) -> None:
    """Repair run while the call was still going (a rolling deploy's new process, `--older-than` too short, a stream
    longer than the stale age): the served call's settle charges the balance and logs the call (the review's find:
    it was served free, unlogged, with `ledger verify` still saying ok)."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=spares)
    hold = await book.reserve(hold_request(user_id, key_id, 2000))
    assert await ledger_owners.release(engine, hold.id) is True  # the call is still running in `book`
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD
    done = settlement(hold, 300)
    assert await book.settle(done) == 300
    assert await book.settle(done) == 0  # a second settle of the same call never charges again
    await book.close()
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD - 300
    async with engine.connect() as conn:
        logged = (await conn.execute(select(request_log.c.charged_nanos).where(
            request_log.c.request_id == done.entry.request_id))).scalars().all()  # fmt: skip
    assert logged == [300]
    assert await accounts.verify(engine) == []


async def test_verify_finds_a_tampered_balance(engine: AsyncEngine) -> None:
    user_id, _ = await new_account(engine, "1")
    from aipower.storage.tables import users as users_table

    async with engine.begin() as conn:
        await conn.execute(update(users_table).where(users_table.c.id == user_id).values(balance_nanos=USD + 1))
    problems = await accounts.verify(engine)
    assert [p.user_id for p in problems] == [user_id]
    async with engine.begin() as conn:
        await conn.execute(update(users_table).where(users_table.c.id == user_id).values(balance_nanos=USD))


async def test_a_reference_credited_from_several_processes_at_once_is_credited_once(
    database_url: str, engine: AsyncEngine
) -> None:
    """The same payment credited by four processes at the same moment (a webhook delivered twice, two operators):
    one credits it, the others find it credited; the same reference for two users: one of them is refused."""
    user_id, _ = await new_account(engine)
    other_id, _ = await new_account(engine)
    others = [db.make_engine(database_url) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(
            *(accounts.top_up(e, user_id, Decimal(5), RULES, None, f"pay-{user_id}") for e in others),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyCredited"] * 3 + ["int"]
        crossed = await asyncio.gather(
            accounts.grant(others[0], user_id, Decimal(2), None, f"pay-{other_id}"),
            accounts.grant(others[1], other_id, Decimal(2), None, f"pay-{other_id}"),
            return_exceptions=True,
        )
    finally:
        for other in others:
            await other.dispose()
    assert sorted(type(o).__name__ for o in crossed) == ["MoneyError", "int"]
    balances = [(await accounts.balance(engine, uid)).balance_nanos for uid in (user_id, other_id)]
    assert sum(balances) == 6 * USD + 2 * USD  # $5 + the first bonus, once; one grant of $2
    assert await accounts.verify(engine) == []
