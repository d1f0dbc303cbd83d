"""Account operations outside a call: top-ups with bonuses, grants, caps, balance views, verify and repair."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aipower import money
from aipower.catalog import BillingRules
from aipower.gateway import billing
from aipower.gateway.protocols import Balance
from aipower.storage.ledger import today
from aipower.storage.ledger_sql import SPARE_MODE
from aipower.storage.tables import holds, ledger, users

u = users.c
MAX_REFERENCE = 200  # characters of a top-up's or grant's outside reference (ledger.reference)


class AlreadyCredited(Exception):
    """The reference was credited before, to the same user and amount: nothing was done now (a retry)."""

    def __init__(self, reference: str, credited_at: dt.datetime) -> None:
        super().__init__(f"{reference!r} was credited on {credited_at:%Y-%m-%d %H:%M} UTC; nothing was done now")
        self.reference = reference
        self.credited_at = credited_at


@dataclass(frozen=True, slots=True)
class Discrepancy:
    user_id: int
    balance_nanos: int
    held_nanos: int
    ledger_nanos: int


async def top_up(
    engine: AsyncEngine, user_id: int, usd: Decimal, rules: BillingRules, note: str | None, reference: str | None = None
) -> int:
    """Credit a top-up and the bonuses it earns (one transaction); returns the total credited in nanos.

    The write comes first: it takes the user's row (PostgreSQL) or the database's write lock (SQLite) before anything
    is read, so two top-ups at once cannot both find themselves the user's first (and both earn its bonus).
    With a `reference` (a payment or invoice id) it is credited at most once: AlreadyCredited for a retry of the
    same credit, MoneyError if the reference was used for another user, amount or kind."""
    amount = _positive(usd)

    async def credit(conn: AsyncConnection) -> int:
        lifetime = await _credit(conn, user_id, amount, topup=True)
        await _refuse_used(conn, reference, user_id, amount, "top-up")
        earned = billing.bonuses(rules, usd, first=lifetime == amount)
        bonus = sum(nanos for _, nanos in earned)
        if bonus:
            await _credit(conn, user_id, bonus)
        await _append(conn, user_id, amount, "top-up", note, reference)
        for why, nanos in earned:
            await _append(conn, user_id, nanos, "bonus", why)
        return amount + bonus

    return await _once(engine, credit, reference, user_id, amount, "top-up")


async def grant(engine: AsyncEngine, user_id: int, usd: Decimal, note: str | None, reference: str | None = None) -> int:
    """An admin gift: credited, but no bonus and no tier unlock. With a `reference`, at most once (as top_up)."""
    amount = _positive(usd)

    async def credit(conn: AsyncConnection) -> int:
        await _credit(conn, user_id, amount)
        await _refuse_used(conn, reference, user_id, amount, "grant")
        await _append(conn, user_id, amount, "grant", note, reference)
        return amount

    return await _once(engine, credit, reference, user_id, amount, "grant")


async def deduct(engine: AsyncEngine, user_id: int, usd: Decimal, note: str, reference: str | None = None) -> int:
    """A correction that takes money back (a mistaken top-up, a chargeback): a negative `adjustment` row, no change to
    lifetime top-ups; refused (MoneyError) beyond the balance, which never goes below zero. With a `reference`, at
    most once (as top_up)."""
    amount = _positive(usd)

    async def take(conn: AsyncConnection) -> int:
        try:
            await _debit(conn, user_id, amount)
        except money.MoneyError:  # not enough left: maybe because this very deduction was made before (a retry)
            await _refuse_used(conn, reference, user_id, -amount, "adjustment")
            raise
        await _refuse_used(conn, reference, user_id, -amount, "adjustment")
        await _append(conn, user_id, -amount, "adjustment", note, reference)
        return amount

    return await _once(engine, take, reference, user_id, -amount, "adjustment")


async def _debit(conn: AsyncConnection, user_id: int, nanos: int) -> None:
    result = await conn.execute(
        update(users).where(u.id == user_id, u.balance_nanos >= nanos).values(balance_nanos=u.balance_nanos - nanos)
    )
    if result.rowcount == 1:
        return
    balance = (await conn.execute(select(u.balance_nanos).where(u.id == user_id))).scalar_one_or_none()
    if balance is None:
        raise money.MoneyError(f"no user with id {user_id}")
    raise money.MoneyError(
        f"the balance is ${money.usd_text(balance)} (calls in flight hold the rest): at most that can be taken back"
    )


async def _once(
    engine: AsyncEngine,
    credit: Callable[[AsyncConnection], Awaitable[int]],
    reference: str | None,
    user_id: int,
    amount: int,
    reason: str,
) -> int:
    """Run `credit` in one transaction. Two credits of one reference at once: the user's row lock (or SQLite's write
    lock) lets one check after the other commits; for two users, the unique index refuses the second row."""
    if reference is not None and not 0 < len(reference) <= MAX_REFERENCE:
        raise money.MoneyError(f"a reference is 1 to {MAX_REFERENCE} characters")
    try:
        async with engine.begin() as conn:
            return await credit(conn)
    except IntegrityError:
        if reference is None:
            raise
        async with engine.connect() as conn:
            await _refuse_used(conn, reference, user_id, amount, reason)
        raise


async def _refuse_used(conn: AsyncConnection, reference: str | None, user_id: int, amount: int, reason: str) -> None:
    if reference is None:
        return
    query = select(ledger.c.user_id, ledger.c.amount_nanos, ledger.c.reason, ledger.c.created_at).where(
        ledger.c.reference == reference
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return
    if (row.user_id, row.amount_nanos, row.reason) == (user_id, amount, reason):
        raise AlreadyCredited(reference, row.created_at)
    raise money.MoneyError(
        f"reference {reference!r} was already used for {'an' if row.reason[0] in 'aeiou' else 'a'} {row.reason} of "
        f"${money.usd_text(row.amount_nanos)} "
        f"to user {row.user_id}: nothing was credited; use another reference"
    )


async def _append(
    conn: AsyncConnection, user_id: int, amount: int, reason: str, note: str | None, reference: str | None = None
) -> None:
    """One ledger row (top-ups, bonuses and grants; calls write theirs in ledger_sql's batches)."""
    values = {"user_id": user_id, "amount_nanos": amount, "reason": reason, "note": note, "reference": reference}
    await conn.execute(insert(ledger).values(**values, created_at=dt.datetime.now(dt.UTC)))


async def _credit(conn: AsyncConnection, user_id: int, nanos: int, *, topup: bool = False) -> int:
    """Add to the balance (and, for a top-up, to lifetime top-ups), refusing a balance past what a 64-bit integer
    holds (SQLite would turn it into an inexact float; PostgreSQL would fail). Returns the lifetime top-ups."""
    lifetime = u.lifetime_topup_nanos + nanos if topup else u.lifetime_topup_nanos
    result = await conn.execute(
        update(users)
        .where(u.id == user_id, u.balance_nanos <= money.MAX_NANOS - nanos)
        .values(balance_nanos=u.balance_nanos + nanos, lifetime_topup_nanos=lifetime)
        .returning(u.lifetime_topup_nanos)
    )
    updated = result.scalar_one_or_none()
    if updated is None:
        if (await conn.execute(select(u.id).where(u.id == user_id))).first() is None:
            raise money.MoneyError(f"no user with id {user_id}")
        raise money.MoneyError("that would take the balance past the largest amount the ledger holds")
    return int(updated)


async def set_cap(engine: AsyncEngine, user_id: int, usd: Decimal | None) -> None:
    cap = None if usd is None else money.usd_to_nanos(usd)
    if cap is not None and not 0 <= cap <= money.MAX_OPERATION_NANOS:
        raise money.MoneyError(f"a daily cap is from 0 to {money.usd_text(money.MAX_OPERATION_NANOS)} USD")
    async with engine.begin() as conn:
        await conn.execute(update(users).where(u.id == user_id).values(daily_cap_nanos=cap))


async def balance(engine: AsyncEngine, user_id: int) -> Balance:
    """The account as its owner sees it. Spare holds (storage.ledger_spares: taken for a key's next call, released
    unused within a second) count as balance, not as held or spent: the balance after a call is what it was less that
    call's charge."""
    day = today()
    spare = holds.c.mode == SPARE_MODE
    open_holds = holds.c.user_id == user_id, holds.c.settled_at.is_(None)

    def total(value: Any) -> Any:
        return select(func.coalesce(func.sum(value), 0)).where(*open_holds).scalar_subquery()

    query = (
        select(  # one statement: the row and its holds as of one moment (a spare taken between two would count twice)
            users,
            total(case((spare, 0), else_=holds.c.amount_nanos)).label("held"),
            total(case((spare, holds.c.amount_nanos), else_=0)).label("spared"),
            total(case((spare & (holds.c.spend_day == day), holds.c.amount_nanos), else_=0)).label("spared_today"),
        ).where(u.id == user_id)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one()
    held, spared, spared_today = row.held, row.spared, row.spared_today
    spent_today = row.spend_day_nanos if row.spend_day == day else 0
    return Balance(
        user_id=user_id,
        balance_nanos=row.balance_nanos + int(spared),
        held_nanos=int(held),
        lifetime_topup_nanos=row.lifetime_topup_nanos,
        trial_calls_left=row.trial_calls_left,
        daily_cap_nanos=row.daily_cap_nanos,
        spent_today_nanos=max(0, spent_today - int(spared_today)),
    )


async def verify(engine: AsyncEngine) -> list[Discrepancy]:
    """Every user whose balance + open holds differs from the sum of their ledger, or is negative."""
    open_holds = (
        select(holds.c.user_id, func.sum(holds.c.amount_nanos).label("held"))
        .where(holds.c.settled_at.is_(None))
        .group_by(holds.c.user_id)
        .subquery()
    )
    sums = (
        select(ledger.c.user_id, func.sum(ledger.c.amount_nanos).label("total")).group_by(ledger.c.user_id).subquery()
    )
    query = (
        select(u.id, u.balance_nanos, func.coalesce(open_holds.c.held, 0), func.coalesce(sums.c.total, 0))
        .outerjoin(open_holds, open_holds.c.user_id == u.id)
        .outerjoin(sums, sums.c.user_id == u.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Discrepancy(r[0], r[1], int(r[2]), int(r[3])) for r in rows if r[1] < 0 or r[1] + int(r[2]) != int(r[3])]


async def count_open_holds(engine: AsyncEngine) -> int:
    query = select(func.count()).select_from(holds).where(holds.c.settled_at.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


def _positive(usd: Decimal) -> int:
    amount = money.usd_to_nanos(usd)
    if amount <= 0:
        raise money.MoneyError("the amount must be positive")
    if amount > money.MAX_OPERATION_NANOS:
        raise money.MoneyError(f"at most {money.usd_text(money.MAX_OPERATION_NANOS)} USD at a time")
    return amount
