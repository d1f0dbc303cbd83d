"""The prepaid ledger: holds, settlements, top-ups and grants, each one transaction. Implements gateway Ledger.

Invariant (checked by verify()): for every user, balance + open balance holds == sum(ledger amounts), and the
balance is never negative. Every reserve is one guarded UPDATE (`... WHERE balance >= :amount`), so parallel
calls on any number of processes can never overspend; every settle first closes its hold
(`... WHERE settled_at IS NULL`), so a hold is settled at most once.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aipower import money
from aipower.errors import InsufficientCredit, PermissionDenied
from aipower.gateway.protocols import BillingMode, Hold, HoldRequest, Settlement
from aipower.storage.request_log import row_of
from aipower.storage.tables import api_keys, holds, ledger, request_log, users

u = users.c


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


class SqlLedger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def reserve(self, request: HoldRequest) -> Hold:
        day = today()
        async with self._engine.begin() as conn:
            if request.demo:
                return await _open_hold(conn, request, 0, "demo", day)
            if request.unlock_nanos is not None:
                await _require_unlocked(conn, request)
            if request.trial_eligible and await _take_trial(conn, request.user_id):
                return await _open_hold(conn, request, 0, "trial", day)
            await _take_balance(conn, request, day)
            await _take_key_budget(conn, request)
            return await _open_hold(conn, request, request.amount, "balance", day)

    async def settle(self, settlement: Settlement) -> int:
        hold = settlement.hold
        now = dt.datetime.now(dt.UTC)
        async with self._engine.begin() as conn:
            closed = await conn.execute(
                update(holds).where(holds.c.id == hold.id, holds.c.settled_at.is_(None)).values(settled_at=now)
            )
            if closed.rowcount == 0:
                return 0  # already settled (e.g. by repair): never charge twice
            entry = settlement.entry
            charged = await _settle_hold(
                conn, hold, settlement.charge, settlement.succeeded, entry.request_id, entry.model
            )
            await conn.execute(update(holds).where(holds.c.id == hold.id).values(charged_nanos=charged))
            row = row_of(settlement.entry)
            row["charged_nanos"] = charged
            await conn.execute(insert(request_log), [row])
            await conn.execute(update(api_keys).where(api_keys.c.id == hold.key_id).values(last_used_at=now))
        return charged


async def _require_unlocked(conn: AsyncConnection, request: HoldRequest) -> None:
    topups = (await conn.execute(select(u.lifetime_topup_nanos).where(u.id == request.user_id))).scalar_one()
    if request.unlock_nanos is not None and topups < request.unlock_nanos:
        raise PermissionDenied(
            f"This model is not available on the free tier. It unlocks once your top-ups reach "
            f"${money.usd_text(request.unlock_nanos)} (so far ${money.usd_text(topups)}); the free tier "
            "covers the low-cost models marked free_tier in GET /v1/models.",
            code="model_not_allowed_on_free_tier",
            param="model",
        )


async def _take_trial(conn: AsyncConnection, user_id: int) -> bool:
    result = await conn.execute(
        update(users).where(u.id == user_id, u.trial_calls_left > 0).values(trial_calls_left=u.trial_calls_left - 1)
    )
    return result.rowcount == 1


async def _take_balance(conn: AsyncConnection, request: HoldRequest, day: str) -> None:
    spent_today = case((u.spend_day == day, u.spend_day_nanos), else_=0)
    result = await conn.execute(
        update(users)
        .where(
            u.id == request.user_id,
            u.balance_nanos >= request.amount,
            (u.daily_cap_nanos.is_(None)) | (spent_today + request.amount <= u.daily_cap_nanos),
        )
        .values(
            balance_nanos=u.balance_nanos - request.amount,
            spend_day_nanos=spent_today + request.amount,
            spend_day=day,
        )
    )
    if result.rowcount == 1:
        return
    row = (await conn.execute(select(users).where(u.id == request.user_id))).one()
    if row.balance_nanos < request.amount:
        raise InsufficientCredit(
            f"Insufficient credits: your balance is ${money.usd_text(row.balance_nanos)} and this request may cost "
            f"up to ${money.usd_text(request.amount)} (prompt estimate plus max_tokens). Top up, or lower max_tokens.",
            code="insufficient_credits",
        )
    spent = row.spend_day_nanos if row.spend_day == day else 0
    raise InsufficientCredit(
        f"Daily spending cap reached: today (UTC) you have spent ${money.usd_text(spent)} of your "
        f"${money.usd_text(row.daily_cap_nanos)} cap and this request may cost up to "
        f"${money.usd_text(request.amount)}. The cap resets at 00:00 UTC.",
        code="daily_cap_reached",
    )


async def _take_key_budget(conn: AsyncConnection, request: HoldRequest) -> None:
    k = api_keys.c
    result = await conn.execute(
        update(api_keys)
        .where(
            k.id == request.key_id,
            (k.spend_limit_nanos.is_(None)) | (k.spent_nanos + request.amount <= k.spend_limit_nanos),
        )
        .values(spent_nanos=k.spent_nanos + request.amount)
    )
    if result.rowcount == 0:
        raise InsufficientCredit(
            f"This API key has reached its spend limit (this request may cost up to "
            f"${money.usd_text(request.amount)}). Ask the operator to raise it, or use another key.",
            code="key_spend_limit_reached",
        )


async def _open_hold(conn: AsyncConnection, request: HoldRequest, amount: int, mode: str, day: str) -> Hold:
    hold = Hold(
        id="hold_" + secrets.token_hex(12),
        user_id=request.user_id,
        key_id=request.key_id,
        amount=amount,
        mode=_mode(mode),
        day=day,
    )
    await conn.execute(
        insert(holds).values(
            id=hold.id,
            user_id=hold.user_id,
            key_id=hold.key_id,
            request_id=request.request_id,
            amount_nanos=amount,
            mode=mode,
            spend_day=day,
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    return hold


async def release(engine: AsyncEngine, hold_id: str) -> bool:
    """Settle an abandoned hold (its process died mid-call) at no charge; False if it was already settled."""
    async with engine.begin() as conn:
        row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).one()
        closed = await conn.execute(
            update(holds)
            .where(holds.c.id == hold_id, holds.c.settled_at.is_(None))
            .values(settled_at=dt.datetime.now(dt.UTC), charged_nanos=0)
        )
        if closed.rowcount == 0:
            return False
        hold = Hold(row.id, row.user_id, row.key_id, row.amount_nanos, _mode(row.mode), row.spend_day)
        await _settle_hold(conn, hold, 0, False, row.request_id, "released by repair")
    return True


async def _settle_hold(
    conn: AsyncConnection, hold: Hold, charge: int, succeeded: bool, request_id: str, note: str
) -> int:
    """Move the hold's money: charge (at most hold + what the balance has), release the rest. Returns the charge."""
    if hold.mode == "demo":
        return 0
    if hold.mode == "trial":
        if succeeded:
            await _append(conn, hold.user_id, 0, "trial", request_id, "free trial call")
        else:
            await conn.execute(
                update(users).where(u.id == hold.user_id).values(trial_calls_left=u.trial_calls_left + 1)
            )
        return 0
    extra_wanted = max(0, charge - hold.amount)
    extra = 0
    if extra_wanted:
        balance = (
            await conn.execute(select(u.balance_nanos).where(u.id == hold.user_id).with_for_update())
        ).scalar_one()
        extra = min(extra_wanted, balance)
    charged = min(charge, hold.amount) + extra
    delta = hold.amount - charged  # returned to the balance (negative: taken beyond the hold)
    await conn.execute(
        update(users)
        .where(u.id == hold.user_id)
        .values(
            balance_nanos=u.balance_nanos + delta,
            spend_day_nanos=case((u.spend_day == hold.day, u.spend_day_nanos - delta), else_=u.spend_day_nanos),
        )
    )
    await conn.execute(
        update(api_keys).where(api_keys.c.id == hold.key_id).values(spent_nanos=api_keys.c.spent_nanos - delta)
    )
    if charged:
        await _append(conn, hold.user_id, -charged, "usage", request_id, note)
    return charged


async def _append(
    conn: AsyncConnection, user_id: int, amount: int, reason: str, request_id: str | None, note: str | None
) -> None:
    await conn.execute(
        insert(ledger).values(
            user_id=user_id,
            amount_nanos=amount,
            reason=reason,
            request_id=request_id,
            note=note,
            created_at=dt.datetime.now(dt.UTC),
        )
    )


def _mode(text: str) -> BillingMode:
    match text:
        case "trial" | "demo" | "balance":
            return text
    raise ValueError(f"unknown billing mode {text!r}")
