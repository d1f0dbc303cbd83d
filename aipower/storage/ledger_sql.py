"""The ledger's statements and the one transaction that runs a batch of holds and settlements. Storage layer.

Everything here is synchronous, on one `BatchConnection` (storage.batch), so one batch is one transaction: on
SQLite a plain sqlite3 connection (inline or on the writer thread), on PostgreSQL the asyncpg connection, driven
through `AsyncConnection.run_sync`.
Statements are built once with bind parameters, so a call only binds values. Every reserve is still its own
guarded UPDATE (`... WHERE balance >= :amount`), and every hold is closed at most once (`settled_at IS NULL`,
checked under the transaction's write lock), whatever else shares the batch.

A batch of reserves only may commit without waiting for the disk (db.Transactions, `durable=False`): a database
crash can then lose a hold, and with it the balance it took. Its call was served, so its settle finds no row at
all for the hold and charges the balance instead (`_settle_lost`); a hold that exists but is settled is never
charged again.

Lock order (PostgreSQL, where several processes' batches run at once): holds, then users in ascending id, then keys.
A batch that touches more than one user locks them all with one statement, after its holds and before any other
write, and a key is only ever locked after its user, so two batches cannot wait for each other in a circle. The
lone-call functions (ledger_alone) lock hold, user, key, the same order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Update, bindparam, case, false, func, insert, select, update

from aipower import money
from aipower.errors import GatewayError, InsufficientCredit, PermissionDenied
from aipower.gateway.protocols import Hold, HoldRequest, Settlement
from aipower.storage.batch import BatchConnection
from aipower.storage.request_log import row_of
from aipower.storage.tables import api_keys, holds, ledger, request_log, users

logger = logging.getLogger(__name__)

u, k, h = users.c, api_keys.c, holds.c
SPARE_MODE = "spare"  # holds.mode of a spare hold (storage.ledger_spares); in memory its mode is "balance"
_SPENT_TODAY = case((u.spend_day == bindparam("p_day"), u.spend_day_nanos), else_=0)


def _take_from_user(room: str, *guards: ColumnElement[bool]) -> Update:
    """Take `p_amount` from the balance into the day's spend, if the premium unlock is met and the balance and the
    day's cap have `room` (a bind name) left."""
    return (
        update(users)
        .where(
            u.id == bindparam("p_uid"),
            u.lifetime_topup_nanos >= bindparam("p_unlock"),  # the premium unlock (0: none needed)
            u.balance_nanos >= bindparam(room),
            *guards,
            (u.daily_cap_nanos.is_(None)) | (_SPENT_TODAY + bindparam(room) <= u.daily_cap_nanos),
        )
        .values(
            balance_nanos=u.balance_nanos - bindparam("p_amount"),
            spend_day_nanos=_SPENT_TODAY + bindparam("p_amount"),
            spend_day=bindparam("p_day"),
        )
    )


def _take_from_key(room: str) -> Update:
    """Add `p_amount` to the key's spend, if its spend limit has `room` (a bind name) left."""
    return (
        update(api_keys)
        .where(
            k.id == bindparam("p_kid"),
            (k.spend_limit_nanos.is_(None)) | (k.spent_nanos + bindparam(room) <= k.spend_limit_nanos),
        )
        .values(spent_nanos=k.spent_nanos + bindparam("p_amount"))
    )


TAKE_BALANCE = _take_from_user("p_amount")
TAKE_KEY_BUDGET = _take_from_key("p_amount")
TAKE_TRIAL = (
    update(users)
    .where(u.id == bindparam("p_uid"), u.trial_calls_left > 0)
    .values(trial_calls_left=u.trial_calls_left - 1)
)
# A spare hold (storage.ledger_spares): taken only while the account has room for `p_room` (several such holds) in
# its balance, its day's cap and the key's spend limit, and only from a user with no trial call left when the call
# may use one; it refuses nothing, it just is not taken.
TAKE_SPARE_BALANCE = _take_from_user(
    "p_room", (bindparam("p_trial", type_=Boolean) == false()) | (u.trial_calls_left <= 0)
)
TAKE_SPARE_KEY = _take_from_key("p_room")
GIVE_TRIAL = update(users).where(u.id == bindparam("p_uid")).values(trial_calls_left=u.trial_calls_left + 1)
TRIALS_AND_TOPUPS = select(u.trial_calls_left, u.lifetime_topup_nanos).where(u.id == bindparam("p_uid"))
ACCOUNT = select(u.balance_nanos, u.spend_day, u.spend_day_nanos, u.daily_cap_nanos, u.lifetime_topup_nanos).where(
    u.id == bindparam("p_uid")
)
BALANCE_FOR_UPDATE = select(u.balance_nanos).where(u.id == bindparam("p_uid")).with_for_update()
# `delta` goes back to the balance (negative: taken beyond the hold) and off the day's and the key's spend.
RETURN_TO_USER = (
    update(users)
    .where(u.id == bindparam("p_uid"))
    .values(
        balance_nanos=u.balance_nanos + bindparam("p_delta"),
        spend_day_nanos=case(
            (u.spend_day == bindparam("p_day"), u.spend_day_nanos - bindparam("p_delta")), else_=u.spend_day_nanos
        ),
    )
)
# A settled batch's one write per key: its unspent holds back to its spend, and when it was last used (NULL: unchanged).
SETTLE_KEY = (
    update(api_keys)
    .where(k.id == bindparam("p_kid"))
    .values(
        spent_nanos=k.spent_nanos - bindparam("p_delta"),
        last_used_at=func.coalesce(bindparam("p_now", type_=k.last_used_at.type), k.last_used_at),
    )
)
OPEN_HOLDS = (
    select(h.id)
    .where(h.id.in_(bindparam("p_ids", expanding=True)), h.settled_at.is_(None))
    .order_by(h.id)
    .with_for_update()
)
LOCK_USERS = select(u.id).where(u.id.in_(bindparam("p_uids", expanding=True))).order_by(u.id).with_for_update()
KNOWN_HOLDS = select(h.id).where(h.id.in_(bindparam("p_ids", expanding=True)))
CLOSE_HOLD = (
    update(holds)
    .where(h.id == bindparam("p_hid"), h.settled_at.is_(None))
    .values(settled_at=bindparam("p_now"), charged_nanos=bindparam("p_charged"))
)
INSERT_HOLD = insert(holds)
INSERT_LEDGER = insert(ledger)
INSERT_LOG = insert(request_log)


@dataclass(frozen=True, slots=True)
class Release:
    """Settle a hold at no charge and without a log row: its caller went away, or its process died."""

    hold: Hold
    request_id: str
    note: str


@dataclass(frozen=True, slots=True)
class Spare:
    """A hold to take for a key's next call (storage.ledger_spares), if the account has `room` to spare."""

    request: HoldRequest
    hold: Hold
    room: int


@dataclass(slots=True)
class _Writes:
    """Rows a batch writes with one executemany each, just before it commits."""

    now: dt.datetime
    holds: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    to_users: list[dict[str, Any]] = field(default_factory=list)
    to_keys: dict[str, int] = field(default_factory=dict)  # key id -> nanos back to its spend
    ledger: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    stamps: dict[str, dt.datetime] = field(default_factory=dict)  # key id -> last used

    def flush_balances(self, conn: BatchConnection) -> None:
        if self.to_users:
            conn.run_many(RETURN_TO_USER, self.to_users)
            self.to_users = []

    def flush_refunds(self, conn: BatchConnection, *, stamps_too: bool = True) -> None:
        """What the settles gave back to balances and keys' spend, so that a reserve of the same batch can use it.
        Mid-batch (`stamps_too=False`) only the keys given something back are written: each after its user, whose row
        the balance refund just locked. A key only stamped (a trial, demo or exactly charged call) waits for the final
        flush, after the reserves have locked its user: written here it would be locked before its user, against
        the lock order, and deadlock with a reserve of another process (the second review's find)."""
        self.flush_balances(conn)
        kids = sorted(self.to_keys.keys() | self.stamps.keys()) if stamps_too else sorted(self.to_keys)
        keys = [
            {"p_kid": kid, "p_delta": self.to_keys.pop(kid, 0), "p_now": self.stamps.pop(kid, None)} for kid in kids
        ]
        if keys:
            conn.run_many(SETTLE_KEY, keys)

    def flush(self, conn: BatchConnection) -> None:
        self.flush_refunds(conn)
        for statement, rows in (
            (INSERT_HOLD, self.holds),
            (CLOSE_HOLD, self.closed),
            (INSERT_LEDGER, self.ledger),
            (INSERT_LOG, self.log),
        ):
            if rows:
                conn.run_many(statement, rows)


Settle = Settlement | Release
Result = Hold | int | GatewayError | None  # None: the hold was already settled


def run_batch(
    conn: BatchConnection,
    settles: Sequence[Settle],
    reserves: Sequence[tuple[HoldRequest, Hold]],
    spares: Sequence[Spare] = (),
) -> list[Result]:
    """Settle, then reserve, then take spare holds, in one transaction; one result per operation (settles first), in
    order. A spare's result is its hold, or None when it was not taken.

    A refused reserve (402/403) is its result, not an exception: it changed nothing, and the batch goes on.
    """
    writes = _Writes(dt.datetime.now(dt.UTC))
    users = _users_to_lock(conn, settles, reserves)
    results: list[Result] = []
    if settles:
        results.extend(_settle_all(conn, settles, writes, users))  # locks its holds, then the users
        if reserves or spares:
            writes.flush_refunds(conn, stamps_too=False)  # the reserves' guards see what the settles gave back
    else:
        _lock_users(conn, users)
    results.extend(_reserve_all(conn, reserves, writes))
    results.extend(_take_spare(conn, spare, writes) for spare in spares)
    writes.flush(conn)
    return results


def _take_spare(conn: BatchConnection, spare: Spare, writes: _Writes) -> Hold | None:
    request, hold = spare.request, spare.hold
    params = {"p_uid": hold.user_id, "p_unlock": request.unlock_nanos or 0, "p_room": spare.room,
              "p_trial": request.trial_eligible, "p_amount": hold.amount, "p_day": hold.day}  # fmt: skip
    if conn.run(TAKE_SPARE_BALANCE, params) != 1:
        return None
    if conn.run(TAKE_SPARE_KEY, {"p_kid": hold.key_id, "p_room": spare.room, "p_amount": hold.amount}) != 1:
        conn.run(RETURN_TO_USER, {"p_uid": hold.user_id, "p_delta": hold.amount, "p_day": hold.day})
        return None
    row = _hold_row(hold, request.request_id, writes.now)
    row["mode"] = SPARE_MODE  # a balance hold; reports count it as balance until a call settles it
    writes.holds.append(row)
    return hold


def _users_to_lock(
    conn: BatchConnection, settles: Sequence[Settle], reserves: Sequence[tuple[HoldRequest, Hold]]
) -> list[int]:
    """The users a batch must lock up front, in ascending id: none on SQLite, nor for a batch of one user (the demo
    user's row is never written, so never locked: every process's demo calls would queue on it)."""
    if not conn.locks_rows:
        return []
    ids = {s.hold.user_id for s in settles if s.hold.mode != "demo"}
    ids.update(request.user_id for request, _ in reserves if not request.demo)
    return sorted(ids) if len(ids) > 1 else []


def _lock_users(conn: BatchConnection, users: list[int]) -> None:
    if users:
        conn.fetch(LOCK_USERS, {"p_uids": users})


def _reserve_all(
    conn: BatchConnection, reserves: Sequence[tuple[HoldRequest, Hold]], writes: _Writes
) -> list[Hold | GatewayError]:
    """Every reserve, with the result it would have alone. Calls of one user and key that take from the balance share
    one guarded UPDATE of the balance and one of the key's budget, for their total, when the total fits: each call
    would then have fitted on its own (balance, daily cap and spend limit are sums, the premium unlock a minimum).
    When it does not fit they go one by one. The balance UPDATE checks the premium unlock too, so a paid call reads
    nothing first; a user's trial calls (and top-ups) are read once per batch, for calls that may use a trial."""
    results: dict[int, Hold | GatewayError] = {}
    accounts: dict[int, tuple[int, int]] = {}
    groups: dict[tuple[int, str, str], list[int]] = {}
    for i, (request, hold) in enumerate(reserves):
        if request.demo:
            results[i] = _reserve(conn, request, hold, writes)
            continue
        if request.trial_eligible:
            if request.user_id not in accounts:
                accounts[request.user_id] = tuple(conn.fetch(TRIALS_AND_TOPUPS, {"p_uid": request.user_id})[0])
            trials, topups = accounts[request.user_id]
            if request.unlock_nanos is not None and topups < request.unlock_nanos:
                results[i] = _locked(request.unlock_nanos, topups)
                continue
            if trials > 0:  # one by one: who gets the last trial calls is in order
                results[i] = _reserve(conn, request, hold, writes)
                continue
        groups.setdefault((request.user_id, request.key_id, hold.day), []).append(i)
    for (user_id, key_id, day), members in groups.items():
        if len(members) > 1 and _take_together(conn, user_id, key_id, day, [reserves[i][0] for i in members]):
            results.update((i, _held(reserves[i], writes)) for i in members)
            continue
        for i in members:
            try:
                _take_balance(conn, reserves[i][0], day)
            except GatewayError as refused:
                results[i] = refused
                continue
            results[i] = _held(reserves[i], writes)
    return [results[i] for i in range(len(reserves))]


def _take_together(conn: BatchConnection, user_id: int, key_id: str, day: str, requests: list[HoldRequest]) -> bool:
    total = sum(r.amount for r in requests)
    unlock = max(r.unlock_nanos or 0 for r in requests)
    if conn.run(TAKE_BALANCE, {"p_uid": user_id, "p_unlock": unlock, "p_amount": total, "p_day": day}) != 1:
        return False
    if conn.run(TAKE_KEY_BUDGET, {"p_kid": key_id, "p_amount": total}) == 1:
        return True
    conn.run(RETURN_TO_USER, {"p_uid": user_id, "p_delta": total, "p_day": day})
    return False


def _held(reserve: tuple[HoldRequest, Hold], writes: _Writes) -> Hold:
    request, hold = reserve
    writes.holds.append(_hold_row(hold, request.request_id, writes.now))
    return hold


def _reserve(conn: BatchConnection, request: HoldRequest, hold: Hold, writes: _Writes) -> Hold | GatewayError:
    """One call on its own: nothing for the demo key, a trial call when one is left (its premium unlock already
    checked), else the balance."""
    try:
        if not request.demo:
            if request.trial_eligible and conn.run(TAKE_TRIAL, {"p_uid": request.user_id}) == 1:
                hold = Hold(hold.id, hold.user_id, hold.key_id, 0, "trial", hold.day)
            else:
                _take_balance(conn, request, hold.day)
    except GatewayError as refused:
        return refused
    return _held((request, hold), writes)


def _hold_row(hold: Hold, request_id: str, now: dt.datetime) -> dict[str, Any]:
    return {"id": hold.id, "user_id": hold.user_id, "key_id": hold.key_id, "request_id": request_id,
            "amount_nanos": hold.amount, "mode": hold.mode, "spend_day": hold.day, "created_at": now}  # fmt: skip


def _locked(unlock_nanos: int, topups: int) -> PermissionDenied:
    return PermissionDenied(
        f"This model is not available on the free tier. It unlocks once your top-ups reach "
        f"${money.usd_text(unlock_nanos)} (so far ${money.usd_text(topups)}); the free tier "
        "covers the low-cost models marked free_tier in GET /v1/models.",
        code="model_not_allowed_on_free_tier",
        param="model",
    )


def _take_balance(conn: BatchConnection, request: HoldRequest, day: str) -> None:
    """The guarded balance UPDATE (premium unlock, balance, daily cap), then the key's spend limit (undoing the
    first if the second refuses)."""
    amount = request.amount
    took = conn.run(
        TAKE_BALANCE,
        {"p_uid": request.user_id, "p_unlock": request.unlock_nanos or 0, "p_amount": amount, "p_day": day},
    )
    if took != 1:
        raise _refusal(conn, request, day)
    if conn.run(TAKE_KEY_BUDGET, {"p_kid": request.key_id, "p_amount": amount}) == 1:
        return
    conn.run(RETURN_TO_USER, {"p_uid": request.user_id, "p_delta": amount, "p_day": day})
    raise InsufficientCredit(
        f"This API key has reached its spend limit (this request may cost up to "
        f"${money.usd_text(amount)}). Ask the operator to raise it, or use another key.",
        code="key_spend_limit_reached",
    )


def _refusal(conn: BatchConnection, request: HoldRequest, day: str) -> GatewayError:
    balance, spend_day, spend_day_nanos, daily_cap, topups = conn.fetch(ACCOUNT, {"p_uid": request.user_id})[0]
    if request.unlock_nanos is not None and topups < request.unlock_nanos:
        return _locked(request.unlock_nanos, topups)
    if balance < request.amount:
        return InsufficientCredit(
            f"Insufficient credits: your balance is ${money.usd_text(balance)} and this request may cost "
            f"up to ${money.usd_text(request.amount)} (prompt estimate plus max_tokens). Top up, or lower max_tokens.",
            code="insufficient_credits",
        )
    spent = spend_day_nanos if spend_day == day else 0
    return InsufficientCredit(
        f"Daily spending cap reached: today (UTC) you have spent ${money.usd_text(spent)} of your "
        f"${money.usd_text(daily_cap)} cap and this request may cost up to "
        f"${money.usd_text(request.amount)}. The cap resets at 00:00 UTC.",
        code="daily_cap_reached",
    )


def _settle_all(
    conn: BatchConnection, settles: Sequence[Settle], writes: _Writes, users: list[int]
) -> list[int | None]:
    if len(settles) == 1 and (charged := _close_alone(conn, settles[0], writes, users)) is not None:
        return [charged]
    ids = list({s.hold.id for s in settles})
    still_open = {row[0] for row in conn.fetch(OPEN_HOLDS, {"p_ids": ids})}
    _lock_users(conn, users)
    lost: set[str] = set()
    if len(still_open) < len(ids):  # rare: settled before (a double settle), or no row (lost, or released by repair)
        missing = [i for i in ids if i not in still_open]
        lost = set(missing) - {row[0] for row in conn.fetch(KNOWN_HOLDS, {"p_ids": missing})}
    charges: list[int | None] = []
    for item in settles:
        if item.hold.id in lost:
            lost.discard(item.hold.id)  # its row is written (closed) now: a second settle finds it settled
            charges.append(_settle_lost(conn, item, writes))
        elif item.hold.id in still_open:
            still_open.discard(item.hold.id)
            charges.append(_settle_one(conn, item, writes))
        else:
            charges.append(None)  # already settled (a second settle of the call): never charge twice
    return charges


def _close_alone(conn: BatchConnection, item: Settle, writes: _Writes, users: list[int]) -> int | None:
    """A batch's only settle closes its hold first (guarded: `settled_at IS NULL`, under the row's lock) and moves
    the money only if that closed it: one statement, not a look-up and then an UPDATE. None: nothing was done here
    (the hold was settled before or has no row, or the charge needs the balance read): the general path decides."""
    hold = item.hold
    charge = 0 if isinstance(item, Release) or hold.mode != "balance" else item.charge
    if charge > hold.amount:
        return None
    if conn.run(CLOSE_HOLD, {"p_hid": hold.id, "p_now": writes.now, "p_charged": charge}) != 1:
        return None
    _lock_users(conn, users)
    charged = _settle_one(conn, item, writes, closed=True)
    assert charged == charge, (charged, charge)
    return charged


def _settle_lost(conn: BatchConnection, item: Settle, writes: _Writes) -> int:
    """Settle a hold that has no row: repair released it while its call still ran (ledger_owners.release), or its
    reserve committed asynchronously and a database crash lost it; either way the balance (or trial call) it took is
    back.
    The call was served, so the charge comes from the balance now, at most what it has (as a charge above a hold
    does; the key's spend too, and the day's if the account already counts that day), and the hold's row is
    written, closed."""
    hold = item.hold
    mode = hold.mode
    if mode == "trial" and conn.run(TAKE_TRIAL, {"p_uid": hold.user_id}) != 1:
        mode = "balance"  # no trial call left to take again: the balance pays, as the reserve would have made it
    unheld = Hold(hold.id, hold.user_id, hold.key_id, 0, mode, hold.day)
    request_id = item.request_id if isinstance(item, Release) else item.entry.request_id
    writes.holds.append(_hold_row(unheld, request_id, writes.now))
    charged = _settle_one(conn, dataclasses.replace(item, hold=unheld), writes)
    charge = 0 if isinstance(item, Release) else item.charge
    logger.warning(
        "ledger: hold %s (user %s, request %s) has no row (released by repair while its call ran, or its reserve, "
        "committed asynchronously, lost in a database crash): charged %d of %d nanos from the balance",
        hold.id, hold.user_id, request_id, charged, charge,
    )  # fmt: skip
    return charged


def _settle_one(conn: BatchConnection, item: Settle, writes: _Writes, *, closed: bool = False) -> int:
    """Move the money and log the call; then close the hold with the batch's writes, unless it is `closed` already."""
    if isinstance(item, Release):
        charged = _move(conn, item.hold, 0, False, item.request_id, item.note, writes)
    else:
        entry = item.entry
        charged = _move(conn, item.hold, item.charge, item.succeeded, entry.request_id, entry.model, writes)
        row = row_of(entry)
        row["charged_nanos"] = charged
        writes.log.append(row)
        writes.stamps[item.hold.key_id] = writes.now
    if not closed:
        writes.closed.append({"p_hid": item.hold.id, "p_now": writes.now, "p_charged": charged})
    return charged


def _move(
    conn: BatchConnection, hold: Hold, charge: int, succeeded: bool, request_id: str, note: str, w: _Writes
) -> int:
    """Move the hold's money: charge (at most hold + what the balance has), release the rest. Returns the charge."""
    if hold.mode == "demo":
        return 0
    if hold.mode == "trial":
        if succeeded:
            w.ledger.append(_ledger_row(hold.user_id, 0, "trial", request_id, "free trial call", w.now))
        else:
            conn.run(GIVE_TRIAL, {"p_uid": hold.user_id})
        return 0
    extra = 0
    if charge > hold.amount:
        w.flush_balances(conn)  # the balance read below must see this batch's earlier refunds
        balance = conn.fetch(BALANCE_FOR_UPDATE, {"p_uid": hold.user_id})[0][0]
        extra = min(charge - hold.amount, balance)
    charged = min(charge, hold.amount) + extra
    delta = hold.amount - charged
    if delta:
        w.to_users.append({"p_uid": hold.user_id, "p_delta": delta, "p_day": hold.day})
        w.to_keys[hold.key_id] = w.to_keys.get(hold.key_id, 0) + delta
    if charged:
        w.ledger.append(_ledger_row(hold.user_id, -charged, "usage", request_id, note, w.now))
    return charged


def _ledger_row(user_id: int, amount: int, reason: str, request_id: str, note: str, now: dt.datetime) -> dict[str, Any]:
    return {"user_id": user_id, "amount_nanos": amount, "reason": reason, "request_id": request_id, "note": note,
            "created_at": now}  # fmt: skip
