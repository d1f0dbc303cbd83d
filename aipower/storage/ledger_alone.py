"""PostgreSQL: a lone call's reserve and settle as one statement each. Storage layer.

A batch on PostgreSQL is a network round trip per statement: BEGIN, three statements and COMMIT to reserve, BEGIN,
five and COMMIT to settle. A caller alone (nothing else in flight in the process) waited for all twelve, most of
the gateway's added latency at c=1. For the common case the functions of migrations 0004 and 0005 do the same
writes with the same guards in one statement: one round trip each, in the statement's own transaction. The reserve
(a paid call, or one that may use a trial call: it takes a trial call while the user has some, else the balance)
commits without waiting for the disk (as a batch of reserves does); the settle (a paid hold charged at most its
amount) commits durably. When a guard refuses (no balance, daily cap, premium unlock, key limit; a hold already
settled or lost) nothing is written and the answer is None: the caller runs the general batch, which finds out why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, bindparam, func, insert, select
from sqlalchemy.sql.expression import Executable

from aipower.gateway.protocols import BillingMode, Hold, HoldRequest, Settlement
from aipower.storage.request_log import entry_columns, row_of
from aipower.storage.tables import holds, request_log

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
SETTLE_ALONE: Executable = (
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


def may_reserve_alone(request: HoldRequest) -> bool:
    """Paid calls and calls that may use a trial call; the demo key's go through the general batch."""
    return not request.demo


Fetch = Callable[[Executable, Mapping[str, Any]], Awaitable[list[tuple[Any, ...]] | None]]


async def reserve(fetch: Fetch, *, request: HoldRequest, hold: Hold, now: Any) -> Hold | None:
    """The hold taken (a trial call's is of 0, mode "trial"); None if a guard refused and nothing was written, or
    the statement could not be sent (`fetch` answered None)."""
    params = {"p_uid": hold.user_id, "p_kid": hold.key_id, "p_hid": hold.id, "p_rid": request.request_id,
              "p_amount": hold.amount, "p_unlock": request.unlock_nanos or 0, "p_day": hold.day,
              "p_now": now, "p_trial": request.trial_eligible}  # fmt: skip
    try:
        rows = await fetch(RESERVE_ALONE, params)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == KEY_LIMIT_SQLSTATE:  # the function's transaction was rolled back
            return None
        raise
    mode: BillingMode | None = rows[0][0] if rows else None
    if mode is None:
        return None
    return hold if mode == hold.mode else Hold(hold.id, hold.user_id, hold.key_id, 0, mode, hold.day)


def may_settle_alone(settlement: Settlement) -> bool:
    """A paid hold charged at most its amount (a charge above it needs the balance read first)."""
    return settlement.hold.mode == "balance" and 0 <= settlement.charge <= settlement.hold.amount


async def settle(fetch: Fetch, *, settlement: Settlement, now: Any) -> int | None:
    """The charge, or None if nothing was done (the hold was not open): then the general batch decides."""
    hold, entry = settlement.hold, settlement.entry
    params = {"p_hid": hold.id, "p_uid": hold.user_id, "p_kid": hold.key_id, "p_amount": hold.amount,
              "p_charge": settlement.charge, "p_day": hold.day, "p_rid": entry.request_id, "p_note": entry.model,
              "p_now": now}  # fmt: skip
    params.update((f"log_{name}", value) for name, value in row_of(entry).items())
    rows = await fetch(SETTLE_ALONE, params)
    return int(rows[0][0]) if rows else None
