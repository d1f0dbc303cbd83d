"""The ledger's group commit on both backends: many calls share a transaction, yet each is answered on its own,
a refused reserve spoils nothing else, a hold is settled once, and a caller that goes away leaves no open hold.
A hold lost with its asynchronously committed reserve is still charged, once; on PostgreSQL reserves alone commit
with synchronous_commit off and anything with a settle commits durably."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from typing import Any

import pytest
from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import InsufficientCredit, PermissionDenied
from aipower.gateway.protocols import BillingMode, Hold, HoldRequest
from aipower.storage import accounts, db, keys, ledger, ledger_alone
from aipower.storage.batch import BatchConnection, Statements
from aipower.storage.ledger_sql import Release, Settle, run_batch
from aipower.storage.tables import api_keys, holds, request_log
from aipower.storage.tables import ledger as ledger_table
from tests.storage.test_ledger import USD, hold_request, new_account, settlement

SYNCHRONOUS_COMMIT = select(func.current_setting("synchronous_commit"))


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


async def test_a_reserve_answered_as_its_caller_is_cancelled_is_released(engine: AsyncEngine) -> None:
    """The writer commits a queued reserve and answers it; in that same pass of the loop, before the caller resumes,
    the caller is cancelled (a shutdown's timeout, a caller's own timeout). asyncio then raises CancelledError in the
    caller although its answer holds the hold: the hold has no owner, and must be released, not left open."""
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    first = await book.reserve(hold_request(user_id, key_id, 1000))  # a call in flight: the next reserve queues
    callers: list[asyncio.Task[Hold]] = []
    deliver = book._deliver

    def deliver_then_cancel(answer: asyncio.Future[Any], result: Any) -> None:
        deliver(answer, result)
        if callers:
            callers.pop().cancel()

    book._deliver = deliver_then_cancel  # type: ignore[method-assign]
    second = asyncio.create_task(book.reserve(hold_request(user_id, key_id, 5000)))
    callers.append(second)
    with pytest.raises(asyncio.CancelledError):
        await second
    book._deliver = deliver  # type: ignore[method-assign]
    await book.settle(settlement(first, 300))
    await book.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 300, 0)
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


def lost_hold(user_id: int, key_id: str, amount: int, mode: BillingMode = "balance") -> Hold:
    """A hold whose reserve committed asynchronously and was then lost in a database crash: no row, nothing taken."""
    return Hold("hold_lost_" + secrets.token_hex(6), user_id, key_id, amount, mode, ledger.today())


async def usage_rows(engine: AsyncEngine, user_id: int) -> tuple[list[int], list[int]]:
    """The user's usage ledger amounts and request-log charges."""
    async with engine.connect() as conn:
        entries = await conn.execute(
            select(ledger_table.c.amount_nanos).where(
                ledger_table.c.user_id == user_id, ledger_table.c.reason == "usage"
            )
        )
        logged = await conn.execute(select(request_log.c.charged_nanos).where(request_log.c.user_id == user_id))
        return list(entries.scalars()), list(logged.scalars())


async def test_a_settle_whose_hold_row_is_missing_charges_the_balance(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = lost_hold(user_id, key_id, 1000)
    assert await book.settle(settlement(hold, 300)) == 300
    assert await book.settle(settlement(hold, 300)) == 0  # its row is now written, settled: never charged twice
    await book.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 300, 0)
    assert await usage_rows(engine, user_id) == ([-300], [300])
    async with engine.connect() as conn:
        row = (await conn.execute(select(holds).where(holds.c.id == hold.id))).one()
        spent = (await conn.execute(select(api_keys.c.spent_nanos).where(api_keys.c.id == key_id))).scalar_one()
    assert (row.amount_nanos, row.charged_nanos, row.settled_at is not None, spent) == (0, 300, True, 300)
    assert await accounts.verify(engine) == []


async def test_a_missing_hold_takes_no_more_than_the_balance(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "0.000001")  # 1000 nanos
    book = ledger.SqlLedger(engine)
    hold = lost_hold(user_id, key_id, 600)
    charges = await asyncio.gather(book.settle(settlement(hold, 5000)), book.settle(settlement(hold, 5000)))
    await book.close()
    assert sorted(charges) == [0, 1000]  # both in one batch: charged once, and never below zero
    assert (await accounts.balance(engine, user_id)).balance_nanos == 0
    assert (await usage_rows(engine, user_id))[0] == [-1000]
    assert await accounts.verify(engine) == []


async def test_a_missing_trial_hold_takes_the_trial_call_again(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1", trial_calls=1)
    book = ledger.SqlLedger(engine)
    assert await book.settle(settlement(lost_hold(user_id, key_id, 0, "trial"), 5000)) == 0
    assert await book.settle(settlement(lost_hold(user_id, key_id, 0, "trial"), 700)) == 700  # none left: balance
    await book.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.trial_calls_left, balance.balance_nanos) == (0, USD - 700)
    assert await accounts.verify(engine) == []


async def test_a_settle_of_a_settled_hold_charges_nothing(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    assert await book.settle(settlement(hold, 300)) == 300
    await book.close()
    other = ledger.SqlLedger(engine)  # e.g. a retry from a fresh ledger: the row exists, settled
    assert await other.settle(settlement(hold, 300)) == 0
    await other.close()
    assert (await accounts.balance(engine, user_id)).balance_nanos == USD - 300
    assert await usage_rows(engine, user_id) == ([-300], [300])
    assert await accounts.verify(engine) == []


async def test_postgresql_reserves_alone_commit_asynchronously(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    async with engine.connect() as conn:
        default = (await conn.execute(SYNCHRONOUS_COMMIT)).scalar_one()
    assert default != "off"
    seen: list[tuple[int, int, str]] = []

    def recording(
        conn: BatchConnection, settles: list[Settle], reserves: list[tuple[HoldRequest, Hold]], spares: Any = ()
    ) -> Any:
        seen.append((len(settles), len(reserves), conn.fetch(SYNCHRONOUS_COMMIT, {})[0][0]))
        return run_batch(conn, settles, reserves, spares)

    monkeypatch.setattr(ledger, "run_batch", recording)
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine, together=False)  # every batch the general one
    for _ in range(2):
        held = await asyncio.gather(*(book.reserve(hold_request(user_id, key_id, 1000)) for _ in range(4)))
        await asyncio.gather(*(book.settle(settlement(h, 10)) for h in held))
    await book.close()
    assert {(settles > 0, value) for settles, _, value in seen} == {(False, "off"), (True, default)}
    # A lone call's reserve is one function call, in its own transaction: the function turns synchronous_commit off.
    async with engine.connect() as conn:
        lone = hold_request(user_id, key_id, 1000)
        params = {"p_uid": user_id, "p_kid": key_id, "p_hid": "hold_lone", "p_rid": lone.request_id,
                  "p_amount": 1000, "p_unlock": 0, "p_day": "2026-11-25", "p_now": dt.datetime.now(dt.UTC),
                  "p_trial": False}  # fmt: skip
        transaction = await conn.begin()
        assert (await conn.execute(ledger_alone.RESERVE_ALONE, params)).scalar_one() == "balance"
        assert (await conn.execute(SYNCHRONOUS_COMMIT)).scalar_one() == "off"
        await transaction.rollback()
    async with engine.connect() as conn:  # a pooled connection is back at the server's setting
        assert (await conn.execute(SYNCHRONOUS_COMMIT)).scalar_one() == default


def test_postgresql_sends_an_expanding_in_as_one_array() -> None:
    statements = Statements(asyncpg.dialect())
    h = holds.c
    query = select(h.id).where(
        h.user_id == bindparam("a"), h.id.in_(bindparam("ids", expanding=True)), h.mode == bindparam("b")
    )
    compiled = statements.get(query, ())
    assert "holds.id = ANY($3)" in compiled.sql and "$1::INTEGER" in compiled.sql and "$2::VARCHAR" in compiled.sql
    assert compiled.values({"a": 1, "ids": ["x", "y"], "b": "m"}) == (1, "m", ["x", "y"])
    assert statements.get(query, ()) is compiled


class Counting:
    """A BatchConnection that counts the statements run through it."""

    def __init__(self, inner: BatchConnection) -> None:
        self.inner, self.statements = inner, 0
        self.locks_rows = inner.locks_rows

    def run(self, statement: Any, params: Any) -> int:
        self.statements += 1
        return self.inner.run(statement, params)

    def run_many(self, statement: Any, rows: Any) -> None:
        self.statements += 1
        self.inner.run_many(statement, rows)

    def fetch(self, statement: Any, params: Any) -> list[tuple[Any, ...]]:
        self.statements += 1
        return self.inner.fetch(statement, params)


async def reserve_batch(engine: AsyncEngine, requests: list[HoldRequest]) -> tuple[list[Any], int]:
    """One batch of reserves in one transaction, as the ledger's writer runs it; the results and statements run."""
    reserves = [(r, Hold(f"hold_{secrets.token_hex(6)}", r.user_id, r.key_id, r.amount, "balance", "2026-11-25"))
                for r in requests]  # fmt: skip
    runner = db.transactions(engine)
    counted: list[Counting] = []

    def work(conn: BatchConnection) -> list[Any]:
        counted.append(Counting(conn))
        return run_batch(counted[-1], settles=[], reserves=reserves)

    try:
        return await runner.run(work, len(reserves)), counted[-1].statements
    finally:
        await runner.close()


async def test_reserves_of_one_key_in_a_batch_share_their_statements(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    results, statements = await reserve_batch(engine, [hold_request(user_id, key_id, USD // 10) for _ in range(10)])
    assert all(isinstance(r, Hold) for r in results)
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (0, USD)  # the whole balance, to the unit
    assert statements <= 3  # the balance (premium unlock checked there too), the key budget, the hold rows
    assert await accounts.verify(engine) == []


@pytest.mark.parametrize("limit", ["balance", "key"])
async def test_a_batch_that_does_not_fit_together_gets_each_call_its_own_answer(
    engine: AsyncEngine, limit: str
) -> None:
    user_id, key_id = await new_account(engine, "1" if limit == "balance" else "5")
    if limit == "key":
        await keys.restrict(engine, key_id, keys.KeyRestriction(spend_limit_nanos=USD))
    results, _ = await reserve_batch(engine, [hold_request(user_id, key_id, 3 * USD // 20) for _ in range(10)])
    held = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, InsufficientCredit)]
    assert (len(held), len(refused)) == (6, 4)  # 6 x 0.15 fits in 1 USD, the 7th does not
    expected = "insufficient_credits" if limit == "balance" else "key_spend_limit_reached"
    assert {r.code for r in refused} == {expected}
    balance = await accounts.balance(engine, user_id)
    assert balance.held_nanos == 6 * 3 * USD // 20
    assert await accounts.verify(engine) == []


async def test_a_batch_refuses_premium_calls_before_the_unlock_and_holds_the_others(engine: AsyncEngine) -> None:
    """The premium unlock is checked by the balance UPDATE itself: a batch mixing calls to premium models (from a
    user whose top-ups are below the unlock) with calls to free models refuses exactly the premium ones."""
    user_id, key_id = await new_account(engine, "100")  # a grant: no top-ups
    free, premium = hold_request(user_id, key_id, 1000), hold_request(user_id, key_id, 1000, unlock=5 * USD)
    results, _ = await reserve_batch(engine, [free, premium, free, premium])
    assert [type(r).__name__ for r in results] == ["Hold", "PermissionDenied", "Hold", "PermissionDenied"]
    assert {r.code for r in results if isinstance(r, PermissionDenied)} == {"model_not_allowed_on_free_tier"}
    assert (await accounts.balance(engine, user_id)).held_nanos == 2000
    assert await accounts.verify(engine) == []


async def test_a_lone_call_is_three_statements_to_reserve_and_five_to_settle(engine: AsyncEngine) -> None:
    """On PostgreSQL every statement is a round trip the caller waits for (at c=1, most of the gateway's added
    latency): a paid call reads nothing before its guarded UPDATEs, and a lone settle closes its hold (guarded)
    without looking it up first."""
    user_id, key_id = await new_account(engine, "1")
    (hold,), reserved = await reserve_batch(engine, [hold_request(user_id, key_id, 1000)])
    assert reserved == 3  # balance, key budget, hold row
    runner = db.transactions(engine)
    counted: list[Counting] = []

    def settle(conn: BatchConnection, item: Settle) -> list[Any]:
        counted.append(Counting(conn))
        return run_batch(counted[-1], settles=[item], reserves=[])

    try:
        assert await runner.run(lambda conn: settle(conn, settlement(hold, 300))) == [300]
        assert counted[-1].statements == 5  # close, refund to the balance, key, ledger row, log row
        assert await runner.run(lambda conn: settle(conn, settlement(hold, 300))) == [None]  # settled: nothing
    finally:
        await runner.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 300, 0)
    assert await usage_rows(engine, user_id) == ([-300], [300])
    assert await accounts.verify(engine) == []


async def test_lone_calls_that_may_use_a_trial_call_take_one_then_the_balance(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call to a free model uses the user's trial calls while some are left, then the balance; on PostgreSQL a lone
    one reserves in one statement (no batch) either way."""
    reserved_in_batches: list[int] = []

    def recording(
        conn: BatchConnection, settles: list[Settle], reserves: list[tuple[HoldRequest, Hold]], spares: Any = ()
    ) -> Any:
        reserved_in_batches.append(len(reserves))
        return run_batch(conn, settles, reserves, spares)

    monkeypatch.setattr(ledger, "run_batch", recording)
    user_id, key_id = await new_account(engine, "1", trial_calls=2)
    book = ledger.SqlLedger(engine)
    holds_taken = []
    for _ in range(3):
        hold = await book.reserve(hold_request(user_id, key_id, 1000, trial=True))
        holds_taken.append((hold.mode, hold.amount))
        assert await book.settle(settlement(hold, 300)) == (300 if hold.mode == "balance" else 0)
    await book.close()
    assert holds_taken == [("trial", 0), ("trial", 0), ("balance", 1000)]
    if engine.dialect.name == "postgresql":
        assert sum(reserved_in_batches) == 0
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos, balance.trial_calls_left) == (USD - 300, 0, 0)
    assert await accounts.verify(engine) == []


async def test_a_lone_call_refused_by_its_key_limit_takes_nothing(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    await keys.restrict(engine, key_id, keys.KeyRestriction(spend_limit_nanos=1500))
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))
    with pytest.raises(InsufficientCredit) as refused:  # 1000 + 1000 is over the key's 1500
        await book.reserve(hold_request(user_id, key_id, 1000))
    assert refused.value.code == "key_spend_limit_reached"
    assert await book.settle(settlement(hold, 400)) == 400
    await book.close()
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 400, 0)
    assert (await key_state(engine, key_id))[0] == 400  # the key's spend: the one charge, nothing of the refusal
    assert await accounts.verify(engine) == []


async def test_a_lone_reserve_whose_caller_went_away_leaves_no_open_hold(engine: AsyncEngine) -> None:
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    reserving = asyncio.create_task(book.reserve(hold_request(user_id, key_id, 1000)))
    await asyncio.sleep(0)  # the reserve is under way (on PostgreSQL, its one statement is in flight)
    if reserving.done():
        pytest.skip("SQLite: a lone reserve commits inline, before its caller can go away")
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await book.close()  # waits for the statement, and for the release of a hold it took
    balance = await accounts.balance(engine, user_id)
    assert (balance.balance_nanos, balance.held_nanos) == (USD, 0)
    assert await accounts.verify(engine) == []


async def test_a_settled_batch_gives_each_key_its_unspent_holds_back_and_stamps_its_use(engine: AsyncEngine) -> None:
    """One write per key: the unspent part of every hold back to the key's spend, and `last_used_at` set by a
    served call but not by a hold released because its caller went away."""
    user_id, key_id = await new_account(engine, "1")
    await keys.restrict(engine, key_id, keys.KeyRestriction(spend_limit_nanos=USD))
    book = ledger.SqlLedger(engine)
    served, gone = await asyncio.gather(*(book.reserve(hold_request(user_id, key_id, 1000)) for _ in range(2)))
    await book.close()
    runner = db.transactions(engine)
    try:
        released = Release(gone, gone.id, "caller went away")
        assert await runner.run(lambda conn: run_batch(conn, settles=[released], reserves=[])) == [0]
        assert await key_state(engine, key_id) == (1000, None)  # the released hold's 1000 are back; not stamped
        charges = await runner.run(lambda conn: run_batch(conn, settles=[settlement(served, 300)], reserves=[]))
    finally:
        await runner.close()
    assert charges == [300]
    spent, last_used = await key_state(engine, key_id)
    assert spent == 300 and last_used is not None
    assert await accounts.verify(engine) == []


async def key_state(engine: AsyncEngine, key_id: str) -> tuple[int, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(api_keys.c.spent_nanos, api_keys.c.last_used_at).where(api_keys.c.id == key_id))
        ).one()
    return int(row.spent_nanos), row.last_used_at
