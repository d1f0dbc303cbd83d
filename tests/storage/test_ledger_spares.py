"""Spare holds (storage.ledger_spares) on both backends: a lone call's settle takes its key's next hold; limits stay
exact, the owner's balance shows no spare, unused spares go back uncharged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import InsufficientCredit
from aipower.gateway.protocols import Hold
from aipower.storage import accounts, db, keys, ledger, ledger_alone, ledger_spares
from aipower.storage.ledger_sql import Release
from aipower.storage.tables import holds, users
from aipower.storage.tables import ledger as ledger_table
from tests.storage.test_ledger import RULES, USD, hold_request, new_account, settlement


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The ledger's own engine, as the app makes it: the lone-call paths (inline on SQLite, one statement on
    PostgreSQL) are the ones that take spares."""
    made = db.make_engine(database_url, ledger=True)
    yield made
    await made.dispose()


async def open_holds(engine: AsyncEngine, user_id: int) -> list[tuple[str, int, str]]:
    query = select(holds.c.id, holds.c.amount_nanos, holds.c.mode).where(
        holds.c.user_id == user_id, holds.c.settled_at.is_(None)
    )
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(query)).all()]


async def stored_balance(engine: AsyncEngine, user_id: int) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(users.c.balance_nanos).where(users.c.id == user_id))).scalar_one())


async def usage_rows(engine: AsyncEngine, user_id: int) -> list[int]:
    query = select(ledger_table.c.amount_nanos).where(
        ledger_table.c.user_id == user_id, ledger_table.c.reason == "usage"
    )
    async with engine.connect() as conn:
        return sorted(int(row[0]) for row in (await conn.execute(query)).all())


async def test_a_lone_callers_next_call_uses_the_hold_its_last_settle_took(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    first = await book.reserve(hold_request(user_id, key_id, 1000))
    assert await book.settle(settlement(first, 300)) == 300
    [(spare_id, amount, mode)] = await open_holds(engine, user_id)  # written by the settle's transaction
    assert (amount, mode) == (1250, "spare")  # the call's hold and a quarter more
    shown = await accounts.balance(engine, user_id)
    assert (shown.balance_nanos, shown.held_nanos, shown.spent_today_nanos) == (USD - 300, 0, 300)
    assert await stored_balance(engine, user_id) == USD - 300 - 1250
    second = await book.reserve(hold_request(user_id, key_id, 1200))  # a longer prompt: still covered
    assert (second.id, second.amount, second.mode) == (spare_id, 1250, "balance")
    assert await book.settle(settlement(second, 200)) == 200
    await book.close()  # gives back the spare the second settle took
    assert await open_holds(engine, user_id) == []
    assert await stored_balance(engine, user_id) == USD - 500
    assert await usage_rows(engine, user_id) == [-300, -200]
    assert await accounts.verify(engine) == []


async def calls_until_refused(book: ledger.SqlLedger, user_id: int, key_id: str, amount: int) -> tuple[int, str]:
    """One call after another, each charged its whole hold, until one is refused: (calls served, refusal code)."""
    for served in range(1000):
        try:
            hold = await book.reserve(hold_request(user_id, key_id, amount))
        except InsufficientCredit as refused:
            return served, refused.code
        assert await book.settle(settlement(hold, amount)) == amount
    raise AssertionError("never refused")


@pytest.mark.parametrize("limit", ["balance", "daily_cap", "key_spend_limit"])
async def test_every_limit_admits_exactly_what_fits_with_spares(engine: AsyncEngine, limit: str) -> None:
    """20 calls fit. Spares are taken while there is room for 8 more; near the limit every call reserves for itself,
    so the 20th is served and the 21st refused, with the limit's own reason."""
    amount = USD // 20
    user_id, key_id = await new_account(engine, "1" if limit == "balance" else "100")
    if limit == "daily_cap":
        await accounts.set_cap(engine, user_id, Decimal(1))
    if limit == "key_spend_limit":
        await keys.restrict(engine, key_id, keys.KeyRestriction(spend_limit_nanos=20 * amount))
    book = ledger.SqlLedger(engine, spares=True)
    served, code = await calls_until_refused(book, user_id, key_id, amount)
    await book.close()
    expected = {"balance": "insufficient_credits", "daily_cap": "daily_cap_reached"}
    assert (served, code) == (20, expected.get(limit, "key_spend_limit_reached"))
    assert await open_holds(engine, user_id) == []
    assert await usage_rows(engine, user_id) == [-amount] * 20
    assert await accounts.verify(engine) == []


async def test_an_unused_spare_goes_back_uncharged(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_spares, "IDLE_SECONDS", 0.05)
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    await book.settle(settlement(hold, 300))
    assert len(await open_holds(engine, user_id)) == 1
    for _ in range(100):  # released by the writer, without close()
        await asyncio.sleep(0.02)
        if not await open_holds(engine, user_id):
            break
    assert await open_holds(engine, user_id) == []
    assert await stored_balance(engine, user_id) == USD - 300
    assert await accounts.verify(engine) == []
    await book.close()


async def test_a_spare_serves_only_a_call_it_covers(engine: AsyncEngine) -> None:
    """Not a larger call, not a premium call when it was taken for one that needed no unlock, and not a call that may
    use a trial call while the user has one."""
    user_id, key_id = await new_account(engine, None, trial_calls=1)
    await accounts.top_up(engine, user_id, Decimal(10), RULES, None)  # premium unlocked
    book = ledger.SqlLedger(engine, spares=True)

    async def call(amount: int, *, trial: bool = False, unlock: int | None = None) -> tuple[Hold, set[str]]:
        spares = {row[0] for row in await open_holds(engine, user_id)}
        hold = await book.reserve(hold_request(user_id, key_id, amount, trial=trial, unlock=unlock))
        await book.settle(settlement(hold, 10))
        return hold, spares

    first, _ = await call(1000, unlock=5 * USD)  # premium, not trial-eligible: the balance; its settle takes a spare
    assert first.mode == "balance"
    trial, spares = await call(1000, trial=True)  # a trial call is left: it is used, not the spare
    assert (trial.mode, len(spares)) == ("trial", 1) and trial.id not in spares
    larger, spares = await call(2000, unlock=5 * USD)
    assert larger.id not in spares and larger.amount == 2000
    await book.close()
    book = ledger.SqlLedger(engine, spares=True)
    free, _ = await call(1000)  # its settle takes a spare, with no unlock checked
    premium, spares = await call(1000, unlock=5 * USD)
    assert len(spares) == 1 and premium.id not in spares and free.id not in spares
    await asyncio.sleep(0.1)  # on PostgreSQL the spare it did not use goes back with the writer's next batch
    assert not spares & {row[0] for row in await open_holds(engine, user_id)}
    await book.close()
    assert await open_holds(engine, user_id) == []
    assert (await accounts.balance(engine, user_id)).trial_calls_left == 0
    assert await accounts.verify(engine) == []


async def test_a_call_that_ran_past_midnight_takes_no_spare_of_its_day(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare dated with the settling call's day would take the day's spend back to yesterday, and today's cap would
    start again from nothing."""
    amount = USD // 20
    user_id, key_id = await new_account(engine, "100")
    await accounts.set_cap(engine, user_id, Decimal(1))
    book = ledger.SqlLedger(engine, spares=True)
    monkeypatch.setattr(ledger, "today", lambda: "2000-01-01")
    late = await book.reserve(hold_request(user_id, key_id, amount))  # reserved before midnight
    monkeypatch.undo()
    assert (await calls_until_refused(book, user_id, key_id, amount))[0] == 20  # today's cap is reached
    await book.settle(settlement(late, amount))  # the call from yesterday ends, alone
    served, code = await calls_until_refused(book, user_id, key_id, amount)
    await book.close()
    assert (served, code) == (0, "daily_cap_reached")
    assert await open_holds(engine, user_id) == []
    assert await accounts.verify(engine) == []


@pytest.mark.parametrize("limit", ["balance", "daily_cap", "key_spend_limit"])
async def test_a_call_needing_what_a_spare_holds_is_served(engine: AsyncEngine, limit: str) -> None:
    """A spare held for the key's small calls is money the owner is shown as theirs: a larger call that needs it (a
    bigger max_tokens) is served, the spare going back in the same transaction."""
    user_id, key_id = await new_account(engine, "1" if limit == "balance" else "100")
    if limit == "daily_cap":
        await accounts.set_cap(engine, user_id, Decimal(1))
    if limit == "key_spend_limit":
        await keys.restrict(engine, key_id, keys.KeyRestriction(spend_limit_nanos=USD))
    book = ledger.SqlLedger(engine, spares=True)
    small = await book.reserve(hold_request(user_id, key_id, USD // 20))
    await book.settle(settlement(small, USD // 100))
    assert len(await open_holds(engine, user_id)) == 1  # the spare
    big = await book.reserve(hold_request(user_id, key_id, USD - USD // 100))  # all that is left
    assert await book.settle(settlement(big, 0)) == 0
    await book.close()
    assert await open_holds(engine, user_id) == []
    assert await accounts.verify(engine) == []


async def test_a_charge_far_above_its_hold_is_charged_as_without_spares(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    amount = USD // 100
    hold = await book.reserve(hold_request(user_id, key_id, amount))
    assert await book.settle(settlement(hold, 2 * USD)) == USD  # its hold, then all the balance had
    await book.close()
    assert await stored_balance(engine, user_id) == 0
    assert await usage_rows(engine, user_id) == [-USD]
    assert await open_holds(engine, user_id) == []
    assert await accounts.verify(engine) == []


class _Gate:
    """Holds PostgreSQL's settle-with-spare statement back until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = asyncio.Event()
        self.waiting = asyncio.Event()
        real = ledger_alone.settle_with_spare

        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.waiting.set()
            await self.opened.wait()
            return await real(*args, **kwargs)

        monkeypatch.setattr(ledger_alone, "settle_with_spare", gated)


@pytest.mark.parametrize("cut", ["close", "cancel"])
async def test_a_spare_taken_by_a_settle_in_flight_goes_back(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """PostgreSQL: a lone settle still on its way when the ledger closes, or whose caller is cancelled, takes its spare
    all the same; close() gives it back."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the one-statement settle is PostgreSQL's (SQLite settles in the caller, synchronously)")
    gate = _Gate(monkeypatch)
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    settling = asyncio.ensure_future(book.settle(settlement(hold, 300)))
    await gate.waiting.wait()
    if cut == "cancel":
        settling.cancel()
        gate.opened.set()
        with pytest.raises(asyncio.CancelledError):
            await settling
        await asyncio.sleep(0.2)  # the statement finishes without its caller
        assert len(await open_holds(engine, user_id)) == 1  # the spare it took, known to the ledger
        await book.close()
    else:
        closing = asyncio.ensure_future(book.close())
        await asyncio.sleep(0.05)
        gate.opened.set()
        assert await settling == 300
        await closing
    assert await open_holds(engine, user_id) == []
    assert await stored_balance(engine, user_id) == USD - 300
    assert await accounts.verify(engine) == []


async def test_a_release_whose_batch_failed_is_tried_again(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_spares, "IDLE_SECONDS", 0.05)
    monkeypatch.setattr(ledger, "RELEASE_RETRY_SECONDS", 0.05)
    failed: list[int] = []
    real = ledger.run_batch

    def failing_once(conn: Any, settles: Any, reserves: Any, spares: Any = ()) -> Any:
        if any(isinstance(s, Release) for s in settles) and not failed:
            failed.append(len(settles))
            raise RuntimeError("the database went away")
        return real(conn, settles, reserves, spares)

    monkeypatch.setattr(ledger, "run_batch", failing_once)
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    await book.settle(settlement(hold, 300))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if failed and not await open_holds(engine, user_id):
            break
    assert failed == [1]
    assert await open_holds(engine, user_id) == []  # released by the second try, in the running process
    assert await stored_balance(engine, user_id) == USD - 300
    await book.close()
    assert await accounts.verify(engine) == []


async def test_a_growing_conversation_runs_on_spares(engine: AsyncEngine) -> None:
    """Each call holds a little more than the last (its prompt grows): every call after the first runs on the spare
    its predecessor's settle took; one much larger gives the spare back with its own hold and takes a new one."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, spares=True)
    on_spares = 0
    for amount in [1000 + 20 * i for i in range(10)]:
        spares = {row[0] for row in await open_holds(engine, user_id)}
        hold = await book.reserve(hold_request(user_id, key_id, amount))
        on_spares += hold.id in spares
        await book.settle(settlement(hold, 100))
    assert on_spares == 9
    [(small, amount, _)] = await open_holds(engine, user_id)
    assert amount == 1180 + 1180 // 4  # sized by the last call's need, not by the spare it ran on
    big = await book.reserve(hold_request(user_id, key_id, 10_000))
    await asyncio.sleep(0.1)  # on PostgreSQL the release goes with the writer's next batch
    assert [row[0] for row in await open_holds(engine, user_id)] == [big.id]  # the small spare went back
    await book.settle(settlement(big, 100))
    [(spare, amount, _)] = await open_holds(engine, user_id)
    assert spare != small and amount == 12_500
    await book.close()
    assert await open_holds(engine, user_id) == []
    assert await stored_balance(engine, user_id) == USD - 11 * 100
    assert await accounts.verify(engine) == []


def test_an_idle_spare_is_due_a_whole_idle_time_after_it_was_taken_not_later() -> None:
    now = [100.0]
    spares = ledger_spares.Spares(idle=1.0, clock=lambda: now[0])
    for key, at in (("key_a", 100.0), ("key_b", 100.5)):
        now[0] = at
        request = hold_request(1, key, 1000)
        hold = Hold(f"hold_{key}", 1, key, 1000, "balance", "2026-11-26")
        spares.reserved(request, hold)
        spare = spares.settling(hold, f"spare_{key}", "2026-11-26")
        assert spare is not None
        spares.put(spare)
    now[0] = 101.0
    assert [h.key_id for h in spares.expired()] == ["key_a"]
    assert spares.due_in() == 0.5  # key_b's, not a whole second from now
