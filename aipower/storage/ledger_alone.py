"""PostgreSQL: a lone call's reserve and settle as one statement each. Storage layer.

A batch on PostgreSQL is a network round trip per statement: BEGIN, three statements and COMMIT to reserve, BEGIN,
five and COMMIT to settle. A caller alone (nothing else in flight in the process) waited for all twelve, most of
the gateway's added latency at c=1. For the common case the functions of migrations 0004 and 0005 do the same
writes with the same guards in one statement: one round trip each, in the statement's own transaction. The reserve
(a paid call, or one that may use a trial call: it takes a trial call while the user has some, else the balance)
commits without waiting for the disk (as a batch of reserves does); the settle (a paid hold charged at most its
amount) commits durably. When a guard refuses (no balance, daily cap, premium unlock, key limit; a hold already
settled or lost) nothing is written and the answer is None: the caller runs the general batch, which finds out why.

Under load the ledger's writer sends the same statements for many calls at once (`reserve_many`, `settle_many`):
asyncpg's `fetchmany` pipelines them, one round trip, and PostgreSQL runs them in one implicit transaction (an error
in any rolls back all: then every call of the group goes to the general batch). A batch of paid settles and reserves
is then two round trips, sent side by side, instead of about twelve, each of which waited for a busy event loop.
The calls are sent in (user, key, hold) order, so locks are taken users ascending, each key after its user, as
batches take them (ledger_sql); holds belong to one process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, bindparam, func, insert, select
from sqlalchemy.sql.expression import Executable

from aipower.gateway.protocols import BillingMode, Hold, HoldRequest, Settlement
from aipower.storage.ledger_sql import Spare
from aipower.storage.request_log import entry_columns, row_of
from aipower.storage.tables import holds, request_log

logger = logging.getLogger(__name__)
_NOW = holds.c.created_at.type
KEY_LIMIT_SQLSTATE = "AP402"  # raised by aipower_reserve_one when the key's spend limit refuses (rolled back)

_S, _I, _B = String, Integer, BigInteger


def _call(name: str, *params: tuple[str, Any]) -> Any:
    """name($1::type, ...) with one typed bind per (name, type)."""
    return getattr(func, name)(*(bindparam(param, type_=kind) for param, kind in params))


RESERVE_ALONE: Executable = select(
    _call(
        "aipower_reserve_one",
        ("p_uid", _I),
        ("p_kid", _S),
        ("p_hid", _S),
        ("p_rid", _S),
        ("p_amount", _B),
        ("p_unlock", _B),
        ("p_day", _S),
        ("p_now", _NOW),
        ("p_trial", Boolean),
    )
)
_settled = select(
    _call(
        "aipower_settle_alone",
        ("p_hid", _S),
        ("p_uid", _I),
        ("p_kid", _S),
        ("p_amount", _B),
        ("p_charge", _B),
        ("p_day", _S),
        ("p_rid", _S),
        ("p_note", _S),
        ("p_now", _NOW),
    ).label("charged")
).subquery("settled")
_LOG = [c for c in entry_columns() if c.name != "charged_nanos"]  # what the function charged goes there
# The log row is written by the same statement, only if the function closed the hold.
_SETTLE_AND_LOG = (
    insert(request_log)
    .from_select(
        [*(c.name for c in _LOG), "charged_nanos"],
        select(*(bindparam(f"log_{c.name}", type_=c.type) for c in _LOG), _settled.c.charged).where(
            _settled.c.charged.is_not(None)
        ),
        include_defaults=False,
    )
    .returning(request_log.c.charged_nanos)
)
SETTLE_ALONE: Executable = _SETTLE_AND_LOG
_logged = _SETTLE_AND_LOG.cte("logged")
# The same, answering one row for every call (its charge, or NULL if it did nothing), as a pipeline needs.
SETTLE_ALONE_ROW: Executable = select(select(_logged.c.charged_nanos).scalar_subquery())
# The same, then a spare hold for the key's next call (migration 0007), only if the settle closed its hold: no row
# when it did nothing, else (the charge, whether the spare was taken). The function runs for the row the INSERT
# returns, so after the settle, in the same transaction (which commits durably, for the settle).
SETTLE_WITH_SPARE: Executable = select(
    _logged.c.charged_nanos,
    _call(
        "aipower_take_spare",
        ("s_uid", _I),
        ("s_kid", _S),
        ("s_hid", _S),
        ("s_rid", _S),
        ("s_amount", _B),
        ("s_room", _B),
        ("s_unlock", _B),
        ("s_day", _S),
        ("s_now", _NOW),
        ("s_trial", Boolean),
    ),
).select_from(_logged)


def may_reserve_alone(request: HoldRequest) -> bool:
    """Paid calls and calls that may use a trial call; the demo key's go through the general batch."""
    return not request.demo


Fetch = Callable[[Executable, Mapping[str, Any]], Awaitable[list[tuple[Any, ...]] | None]]
FetchMany = Callable[[Executable, Sequence[Mapping[str, Any]]], Awaitable[list[tuple[Any, ...]] | None]]


async def reserve(fetch: Fetch, *, request: HoldRequest, hold: Hold, now: Any) -> Hold | None:
    """The hold taken (a trial call's is of 0, mode "trial"); None if a guard refused and nothing was written, or
    the statement could not be sent (`fetch` answered None)."""
    try:
        rows = await fetch(RESERVE_ALONE, _reserve_params(request, hold, now))
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == KEY_LIMIT_SQLSTATE:  # the function's transaction was rolled back
            return None
        raise
    return _taken(hold, rows[0][0] if rows else None)


async def reserve_many(
    fetch_many: FetchMany, reserves: Sequence[tuple[HoldRequest, Hold]], now: Any
) -> list[Hold | None]:
    """Each reserve's hold, or None for those whose guard refused; all None if the group was rolled back (a key's
    spend limit refused one of them) or could not be sent."""
    order = sorted(range(len(reserves)), key=lambda i: _lock_order(reserves[i][1]))
    rows = await _pipeline(fetch_many, RESERVE_ALONE, [_reserve_params(*reserves[i], now) for i in order])
    taken: list[Hold | None] = [None] * len(reserves)
    if rows is not None:
        for i, row in zip(order, rows, strict=True):
            taken[i] = _taken(reserves[i][1], row[0])
    return taken


def _reserve_params(request: HoldRequest, hold: Hold, now: Any) -> dict[str, Any]:
    return {"p_uid": hold.user_id, "p_kid": hold.key_id, "p_hid": hold.id, "p_rid": request.request_id,
            "p_amount": hold.amount, "p_unlock": request.unlock_nanos or 0, "p_day": hold.day,
            "p_now": now, "p_trial": request.trial_eligible}  # fmt: skip


def _taken(hold: Hold, mode: BillingMode | None) -> Hold | None:
    if mode is None:
        return None
    return hold if mode == hold.mode else Hold(hold.id, hold.user_id, hold.key_id, 0, mode, hold.day)


def _lock_order(hold: Hold) -> tuple[int, str, str]:
    return hold.user_id, hold.key_id, hold.id


async def _pipeline(
    fetch_many: FetchMany, statement: Executable, params: list[dict[str, Any]]
) -> list[tuple[Any, ...]] | None:
    """One row per call, or None if the group's transaction was rolled back or could not be sent."""
    try:
        return await fetch_many(statement, params)
    except Exception as exc:  # noqa: BLE001 - rolled back: the general batch does these calls and reports what failed
        if getattr(exc, "sqlstate", None) != KEY_LIMIT_SQLSTATE:
            logger.warning("ledger: %d calls sent together failed (%s); sending them as a batch", len(params), exc)
        return None


def may_settle_alone(settlement: Settlement) -> bool:
    """A paid hold charged at most its amount (a charge above it needs the balance read first)."""
    return settlement.hold.mode == "balance" and 0 <= settlement.charge <= settlement.hold.amount


async def settle(fetch: Fetch, *, settlement: Settlement, now: Any) -> int | None:
    """The charge, or None if nothing was done (the hold was not open): then the general batch decides."""
    rows = await fetch(SETTLE_ALONE, _settle_params(settlement, now))
    return int(rows[0][0]) if rows else None


async def settle_with_spare(
    fetch: Fetch, *, settlement: Settlement, spare: Spare, now: Any
) -> tuple[int, Hold | None] | None:
    """The charge and the spare hold if it was taken; None if nothing was done (the hold was not open)."""
    hold, request = spare.hold, spare.request
    params = _settle_params(settlement, now)
    params.update(s_uid=hold.user_id, s_kid=hold.key_id, s_hid=hold.id, s_rid=request.request_id,
                  s_amount=hold.amount, s_room=spare.room, s_unlock=request.unlock_nanos or 0, s_day=hold.day,
                  s_now=now, s_trial=request.trial_eligible)  # fmt: skip
    rows = await fetch(SETTLE_WITH_SPARE, params)
    if not rows:
        return None
    charged, taken = rows[0]
    return int(charged), hold if taken else None


async def settle_many(fetch_many: FetchMany, settlements: Sequence[Settlement], now: Any) -> list[int | None]:
    """Each settlement's charge, or None for those that did nothing (the hold was not open); all None if the group
    was rolled back or could not be sent."""
    order = sorted(range(len(settlements)), key=lambda i: _lock_order(settlements[i].hold))
    rows = await _pipeline(fetch_many, SETTLE_ALONE_ROW, [_settle_params(settlements[i], now) for i in order])
    charges: list[int | None] = [None] * len(settlements)
    if rows is not None:
        for i, row in zip(order, rows, strict=True):
            charges[i] = None if row[0] is None else int(row[0])
    return charges


def _settle_params(settlement: Settlement, now: Any) -> dict[str, Any]:
    hold, entry = settlement.hold, settlement.entry
    params = {"p_hid": hold.id, "p_uid": hold.user_id, "p_kid": hold.key_id, "p_amount": hold.amount,
              "p_charge": settlement.charge, "p_day": hold.day, "p_rid": entry.request_id, "p_note": entry.model,
              "p_now": now}  # fmt: skip
    params.update((f"log_{name}", value) for name, value in row_of(entry).items())
    return params
