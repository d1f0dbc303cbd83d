"""Several gateway processes on one PostgreSQL database: their ledger batches lock rows in one global order (holds,
then users by id, then keys), so two batches that touch the same users in opposite orders wait for each other
instead of deadlocking (PostgreSQL would abort one of them, and every caller in it would get an error). The groups of
lone-call statements a loaded writer sends (ledger_alone.reserve_many, settle_many) lock users in ascending id too."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.gateway.protocols import Hold, HoldRequest
from aipower.storage import accounts, db, ledger_alone
from aipower.storage.batch import BatchConnection
from aipower.storage.ledger_sql import Settle, run_batch
from tests.storage.test_ledger import USD, hold_request, new_account, settlement


def held(request: HoldRequest) -> tuple[HoldRequest, Hold]:
    hold_id = f"hold_{secrets.token_hex(6)}"
    return request, Hold(hold_id, request.user_id, request.key_id, request.amount, "balance", "2026-11-26")


async def run_both(
    runners: list[db.Transactions], batches: list[tuple[list[Settle], list[tuple[HoldRequest, Hold]]]]
) -> list[Any]:
    """The batches at once, each in its own transaction on its own pool, as two processes' writers run them."""

    def work(settles: list[Settle], reserves: list[tuple[HoldRequest, Hold]]) -> Any:
        return lambda conn: run_batch(conn, settles, reserves)

    runs = [
        runner.run(work(settles, reserves), len(settles) + len(reserves), durable=bool(settles))
        for runner, (settles, reserves) in zip(runners, batches, strict=True)
    ]
    return await asyncio.gather(*runs, return_exceptions=True)


@contextlib.asynccontextmanager
async def two_processes(database_url: str) -> AsyncIterator[tuple[list[AsyncEngine], list[db.Transactions]]]:
    """Two pools, and a ledger's transactions on each, like two processes."""
    engines = [db.make_engine(database_url, ledger=True) for _ in range(2)]
    runners = [db.transactions(e) for e in engines]
    try:
        yield engines, runners
    finally:
        for runner in runners:
            await runner.close()
        for engine in engines:
            await engine.dispose()


async def test_two_processes_batches_over_the_same_users_in_opposite_orders_both_commit(database_url: str) -> None:
    async with two_processes(database_url) as (engines, runners):
        (a, ka), (b, kb) = [await new_account(engines[0], "1") for _ in range(2)]
        for _ in range(5):  # reserves of A then B against B then A
            outcome = await run_both(
                runners,
                [([], [held(hold_request(a, ka, 1000)), held(hold_request(b, kb, 1000))]),
                 ([], [held(hold_request(b, kb, 1000)), held(hold_request(a, ka, 1000))])],
            )  # fmt: skip
            assert all(isinstance(r, list) for r in outcome), outcome  # no batch aborted
        for _ in range(5):  # settles (refunds to A, then B's reserve) against the mirror image
            first, second = held(hold_request(a, ka, 1000)), held(hold_request(b, kb, 1000))
            await run_both(runners, [([], [first]), ([], [second])])
            outcome = await run_both(
                runners,
                [([settlement(first[1], 100)], [held(hold_request(b, kb, 1000))]),
                 ([settlement(second[1], 100)], [held(hold_request(a, ka, 1000))])],
            )  # fmt: skip
            assert all(isinstance(r, list) for r in outcome), outcome
        for user_id in (a, b):
            balance = await accounts.balance(engines[0], user_id)
            assert balance.balance_nanos + balance.held_nanos == USD - 5 * 100
        assert await accounts.verify(engines[0]) == []


async def test_a_batch_over_several_users_locks_them_once_in_id_order(engine: AsyncEngine) -> None:
    """One statement locks a batch's users, in ascending id, before any other write touches them (PostgreSQL only:
    SQLite's write lock covers the whole database, and the batch there sends no such statement)."""
    (a, ka), (b, kb) = [await new_account(engine, "1") for _ in range(2)]
    seen: list[str] = []

    class Recording:
        def __init__(self, inner: BatchConnection) -> None:
            self.inner = inner
            self.locks_rows = inner.locks_rows

        def run(self, statement: Any, params: Any) -> int:
            seen.append(str(statement).split()[0] + " " + str(params.get("p_uid", "")))
            return self.inner.run(statement, params)

        def run_many(self, statement: Any, rows: Any) -> None:
            seen.append(str(statement).split()[0])
            self.inner.run_many(statement, rows)

        def fetch(self, statement: Any, params: Any) -> list[tuple[Any, ...]]:
            seen.append("SELECT " + str(params.get("p_uids", "")))
            return self.inner.fetch(statement, params)

    runner = db.transactions(engine)
    try:
        reserves = [held(hold_request(b, kb, 1000)), held(hold_request(a, ka, 1000))]
        results = await runner.run(lambda conn: run_batch(Recording(conn), [], reserves), 2)
    finally:
        await runner.close()
    assert all(isinstance(r, Hold) for r in results)
    writes = [s for s in seen if not s.startswith("SELECT")]
    if engine.dialect.name == "postgresql":
        assert seen[0] == f"SELECT {sorted([a, b])}" and len(seen) == len(writes) + 1  # one lock, before any write
    else:
        assert seen == writes
    assert writes[:2] == [f"UPDATE {b}", "UPDATE "]  # then the reserves, in their own order


async def test_two_processes_groups_over_the_same_users_in_opposite_orders_both_commit(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the pipelined statements are PostgreSQL's")
    async with two_processes(database_url) as (engines, runners):
        drivers = [r for r in runners if isinstance(r, db.DriverTransactions)]
        accounts_ = [await new_account(engines[0], "1") for _ in range(4)]
        settled = 0
        for round_ in range(6):
            mine = [held(hold_request(u, k, 1000)) for u, k in accounts_]
            theirs = [held(hold_request(u, k, 1000)) for u, k in reversed(accounts_)]
            now = dt.datetime.now(dt.UTC)
            taken = await asyncio.gather(
                *(
                    ledger_alone.reserve_many(r.alone_many, group, now)
                    for r, group in zip(drivers, (mine, theirs), strict=True)
                )
            )
            assert all(isinstance(h, Hold) for group in taken for h in group), round_  # no group rolled back
            charges = await asyncio.gather(
                *(
                    ledger_alone.settle_many(r.alone_many, [settlement(h, 100) for h in group if h], now)
                    for r, group in zip(drivers, taken, strict=True)
                )
            )
            assert all(c == 100 for group in charges for c in group), round_
            settled += 2 * 100
        for user_id, _ in accounts_:
            balance = await accounts.balance(engines[0], user_id)
            assert (balance.balance_nanos, balance.held_nanos) == (USD - settled, 0)
        assert await accounts.verify(engines[0]) == []


@pytest.mark.parametrize("kind", ["trial", "exact", "refund"])
async def test_a_batch_writes_a_key_only_after_its_user(engine: AsyncEngine, kind: str) -> None:
    """A settle and a reserve of one user in one batch. A settle that gives nothing back to the balance (a trial call, a
    hold charged exactly) still stamps its key: written before the reserve locked the user, that key was locked ahead
    of its user, and two processes deadlocked (second review of the spare holds)."""
    user_id, key_id = await new_account(engine, "1", trial_calls=3 if kind == "trial" else 0)
    seen: list[str] = []

    class Recording:
        def __init__(self, inner: BatchConnection) -> None:
            self.inner = inner
            self.locks_rows = inner.locks_rows

        def note(self, statement: Any) -> None:
            seen.append(getattr(getattr(statement, "table", None), "name", "select"))

        def run(self, statement: Any, params: Any) -> int:
            self.note(statement)
            return self.inner.run(statement, params)

        def run_many(self, statement: Any, rows: Any) -> None:
            self.note(statement)
            self.inner.run_many(statement, rows)

        def fetch(self, statement: Any, params: Any) -> list[tuple[Any, ...]]:
            self.note(statement)
            return self.inner.fetch(statement, params)

    runner = db.transactions(engine)
    try:
        first = await runner.run(
            lambda conn: run_batch(conn, [], [held(hold_request(user_id, key_id, 1000, trial=True))])
        )
        [hold] = first
        assert isinstance(hold, Hold) and hold.mode == ("trial" if kind == "trial" else "balance")
        charge = {"trial": 0, "exact": 1000, "refund": 300}[kind]
        settles: list[Settle] = [settlement(hold, charge)]
        results = await runner.run(
            lambda conn: run_batch(Recording(conn), settles, [held(hold_request(user_id, key_id, 1000))]), 2
        )
    finally:
        await runner.close()
    assert isinstance(results[1], Hold)
    assert "api_keys" in seen and "users" in seen[: seen.index("api_keys")], seen
    assert await accounts.verify(engine) == []


async def test_a_lone_settle_charged_its_whole_hold_locks_the_user_before_the_key(engine: AsyncEngine) -> None:
    """PostgreSQL's one-statement settle of a hold charged exactly wrote no user row, so it took the key's lock before
    (or without) the user's: in a pipeline of settles, or followed by a spare's take, it deadlocked with a reserve of
    another process. It now waits for the user's lock first."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the one-statement settle is PostgreSQL's")
    user_id, key_id = await new_account(engine, "1")
    runner = db.transactions(engine)
    assert isinstance(runner, db.DriverTransactions)
    try:
        [hold] = await runner.run(lambda conn: run_batch(conn, [], [held(hold_request(user_id, key_id, 1000))]))
        assert isinstance(hold, Hold)
        async with engine.connect() as blocker:
            await blocker.exec_driver_sql(f"SELECT 1 FROM users WHERE id = {user_id} FOR NO KEY UPDATE")
            settling = asyncio.ensure_future(
                ledger_alone.settle(runner.alone, settlement=settlement(hold, 1000), now=dt.datetime.now(dt.UTC))
            )
            await asyncio.sleep(0.3)
            assert not settling.done()  # waiting for the user, holding nothing of the key
            async with engine.connect() as other:
                await other.exec_driver_sql(f"SELECT 1 FROM api_keys WHERE id = '{key_id}' FOR NO KEY UPDATE NOWAIT")
                await other.rollback()
            await blocker.rollback()
        assert await settling == 1000
    finally:
        await runner.close()
    assert await accounts.verify(engine) == []
