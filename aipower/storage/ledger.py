"""The prepaid ledger: holds and settlements, group-committed. Implements gateway Ledger. Storage layer.

Invariant (checked by accounts.verify()): for every user, balance + open balance holds == sum(ledger amounts),
and the balance is never negative. Every reserve is one guarded UPDATE (`... WHERE balance >= :amount`), so
parallel calls on any number of processes can never overspend; every settle first checks that its hold is
still open under the transaction's lock, so a hold is settled at most once (see ledger_sql).

Group commit: reserve() and settle() queue their operation and wait for it. One writer task takes everything
queued, runs it in a single transaction (on SQLite inline when small, else one thread hop), and answers each
waiter only after that transaction has committed. Nobody waits for a timer: while one batch is being written the
next one gathers. A lone call (no other call in flight in this process, nothing queued) skips the queue: its
operation runs in the caller (on SQLite when the write lock is free; on PostgreSQL a call's reserve and a paid
hold's settle are one statement each, storage.ledger_alone), committed before it returns. On PostgreSQL the
writer too sends a batch's paid settles and its reserves as those statements, each group at once and the two side
by side (a round trip each instead of about twelve; the rest, and whatever they refuse, go to the general batch).
A caller never hears "done" for money that is not committed; a crash of the process loses at most work that no
caller was told about (its holds stay open until repair releases them: storage.ledger_owners).

Durability: a batch with a settle commits durably. A batch of reserves only may commit without waiting for the
disk (db.Transactions, durable=False; PostgreSQL's synchronous_commit=off): visible to all at once, row locks
unchanged, so nothing can be overspent; the settle's durable commit makes it durable too. If the database
itself crashes first, the hold may be lost with the balance it took; the settle then charges the balance
(ledger_sql._settle_lost), so a served call is still paid for, at most once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.errors import GatewayError, InsufficientCredit, LedgerUnavailable
from aipower.gateway.protocols import BillingMode, Hold, HoldRequest, Settlement
from aipower.storage import db, ledger_alone, ledger_spares
from aipower.storage.ledger_spares import Spares
from aipower.storage.ledger_sql import Release, Result, Settle, Spare, run_batch

Op = TypeVar("Op")


RELEASE_RETRY_SECONDS = 1.0  # a release whose batch failed is queued again after this


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[Op]):
    op: Op
    answer: asyncio.Future[Result]


class SqlLedger:
    def __init__(
        self,
        engine: AsyncEngine,
        max_batch: int = 256,
        *,
        together: bool = True,
        spares: bool = False,
        owner: str | None = None,
        fenced: Callable[[], bool] | None = None,
    ) -> None:
        """`together` (PostgreSQL): a batch's paid settles and reserves go as two pipelines of the lone-call
        statements (`_together`); without it every batch is the general one (ledger_sql), as tests need to reach.
        `spares`: a lone call's settle takes its key's next hold (storage.ledger_spares). `owner`: the prefix of its
        hold ids (new_owner(); a new one by default), and `fenced`: while it answers True, reserve refuses (503): the
        owner's heartbeat is failing, so others may release its holds (storage.ledger_owners)."""
        self._transactions = db.transactions(engine)
        self._max_batch = max_batch
        self._settles: list[_Waiting[Settle]] = []
        self._reserves: list[_Waiting[tuple[HoldRequest, Hold]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Hold ids: a random prefix per ledger and a counter (os.urandom per call showed up in the profile).
        self._id_prefix = owner or new_owner()
        self._fenced = fenced
        self._serial = itertools.count()
        self._in_flight = 0  # calls between reserve() and settle(): more than one, and batching pays
        driver = self._transactions
        self._alone = driver if isinstance(driver, db.DriverTransactions) else None  # PostgreSQL's one-statement path
        self._alone_running: set[asyncio.Future[Any]] = set()  # lone statements still running (close waits)
        self._together_on = together
        self._spares = Spares() if spares else None
        self._expiry: asyncio.TimerHandle | None = None  # the next check for idle spares
        self._closing = False

    async def reserve(self, request: HoldRequest) -> Hold:
        self._refuse_if_fenced()
        mode: BillingMode = "demo" if request.demo else "balance"
        amount = 0 if request.demo else request.amount
        day = today()
        unfit = None
        if self._spares is not None and not request.demo:
            if (spare := self._spares.take(request, day)) is not None:
                self._in_flight += 1  # the key's spare hold is this call's: nothing to write
                self._spares.reserved(request, spare)
                return spare
            unfit = self._spares.pop(request.key_id)  # too small for this call: it goes back with the call's reserve
        hold = Hold(self._new_id(), request.user_id, request.key_id, amount, mode, day)
        self._in_flight += 1
        done = None
        try:
            gone: list[Settle] = [] if unfit is None else [Release(unfit, unfit.id, "spare hold too small")]
            done = self._run_now(gone, [(request, hold)])  # on SQLite, both in one transaction
            if done is None and unfit is not None:
                self._release_later(unfit, "spare hold too small")  # queued: the writer's batch, with the reserve
                gone, unfit = [], None
            if done is None and self._alone is not None and self._lone() and ledger_alone.may_reserve_alone(request):
                done = await self._reserve_alone(self._alone, request, hold)
            try:
                result = done[len(gone)] if done is not None else await self._queue(self._reserves, (request, hold))
            except InsufficientCredit as refused:  # the writer's batches answer a refusal by raising it
                result = refused
            if isinstance(result, InsufficientCredit) and self._give_back_spares(request.user_id):
                result = await self._queue(self._reserves, (request, hold))  # in the batch that gives them back
        except BaseException:
            self._in_flight -= 1
            if unfit is not None and done is None:  # its release never ran: queue it
                self._release_later(unfit, "spare hold too small")
                self._start_writer()
            raise
        if isinstance(result, GatewayError):
            self._in_flight -= 1
            raise result
        assert isinstance(result, Hold)
        if self._fenced is not None and self._fenced():  # fenced while it was written: others may release it
            self._in_flight -= 1
            self._release_later(result, "taken while the heartbeat failed")
            self._start_writer()
            self._refuse_if_fenced()
        if self._spares is not None:
            self._spares.reserved(request, result)
        return result

    def _refuse_if_fenced(self) -> None:
        if self._fenced is not None and self._fenced():
            raise LedgerUnavailable(
                "This gateway process lost its connection to the ledger's database and takes no new calls until it "
                "is back. Retry in a few seconds (another replica may answer)."
            )

    def _give_back_spares(self, user_id: int) -> bool:
        """A call of this user was refused: this process's spare holds of the user may be what it lacked. They go
        back, ahead of the call's second try in the writer's next batch (one transaction: releases first). False if
        there were none."""
        if self._spares is None:
            return False
        spares = self._spares.of_user(user_id)
        for hold in spares:
            self._release_later(hold, "spare hold given back for a refused call")
        return bool(spares)

    @property
    def owner(self) -> str:
        """The prefix of every hold id this ledger writes: its row in ledger_owners (storage.ledger_owners)."""
        return self._id_prefix

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._serial):08x}"

    async def settle(self, settlement: Settlement) -> int:
        """The charge, once it is committed (0 if the hold was already settled)."""
        now = self.settle_now(settlement)
        if now is not None:
            return now
        try:
            done = None
            if self._alone is not None and self._lone() and ledger_alone.may_settle_alone(settlement):
                done = await self._settle_alone(self._alone, settlement)
            result = done[0] if done is not None else await self._queue(self._settles, settlement)
        finally:
            self._in_flight = max(0, self._in_flight - 1)
            if self._spares is not None:
                self._spares.forget(settlement.hold)
        assert result is None or isinstance(result, int)
        return result or 0

    async def _settle_alone(self, alone: db.DriverTransactions, settlement: Settlement) -> list[Result] | None:
        """PostgreSQL's one-statement settle, taking the key's next spare with it when it may."""
        spare = self._spare_for(settlement)
        if spare is None:
            charged = await ledger_alone.settle(alone.alone, settlement=settlement, now=_now())
            return None if charged is None else [charged]
        work = ledger_alone.settle_with_spare(alone.alone, settlement=settlement, spare=spare, now=_now())
        running = asyncio.ensure_future(work)
        self._alone_running.add(running)  # close() waits for it
        running.add_done_callback(self._alone_running.discard)
        running.add_done_callback(partial(self._spare_settled, spare))  # even if this caller is cancelled
        outcome = await asyncio.shield(running)
        return None if outcome is None else [outcome[0]]

    def _spare_settled(self, spare: Spare, running: asyncio.Future[tuple[int, Hold | None] | None]) -> None:
        """Keep the spare the settle took. (If its outcome is unknown, a spare it may have taken is left to repair, as
        a lone reserve's is.)"""
        if running.cancelled() or running.exception() is not None:
            return
        outcome = running.result()
        if outcome is not None and outcome[1] is not None:
            self._keep_spare(spare)

    def settle_now(self, settlement: Settlement) -> int | None:
        """The charge, committed right here when the backend can without waiting (a lone call on SQLite with the
        write lock free); None: nothing was done, settle() will."""
        spare = self._spare_for(settlement) if self._alone is None else None  # PostgreSQL: nothing runs here
        try:
            done = self._run_now([settlement], [], [spare] if spare is not None else [])
        except BaseException:
            self._in_flight = max(0, self._in_flight - 1)
            raise
        if done is None:
            return None
        self._in_flight = max(0, self._in_flight - 1)
        if spare is not None and done[1] is not None:
            self._keep_spare(spare)
        result = done[0]
        assert result is None or isinstance(result, int)
        return result or 0

    def _spare_for(self, settlement: Settlement) -> Spare | None:
        """The spare hold this settle may take: for a lone call's paid hold whose key has none, charged at most its
        hold (a charge above it takes the balance first), not while closing."""
        if self._spares is None or self._closing or not self._lone():
            return None
        if settlement.charge > settlement.hold.amount or (self._fenced is not None and self._fenced()):
            # (fenced: others may take this process for dead and release the spare before a call uses it)
            self._spares.forget(settlement.hold)
            return None
        return self._spares.settling(settlement.hold, self._new_id(), today())

    def _keep_spare(self, spare: Spare) -> None:
        assert self._spares is not None
        if self._closing:  # taken by a settle close() waited for: it goes back with the rest
            self._release_later(spare.hold, "spare hold not used")
            self._start_writer()
            return
        self._spares.put(spare)
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(ledger_spares.IDLE_SECONDS, self._expire_spares)

    def _expire_spares(self) -> None:
        """Release the spares unused for a while (the writer's next batch, no charge); check again while any are
        held."""
        self._expiry = None
        if self._spares is None:
            return
        stale = self._spares.expired()
        for hold in stale:
            self._release_later(hold, "spare hold not used")
        if stale:
            self._start_writer()
        due = self._spares.due_in()
        if due is not None:  # when the oldest left is due, not a whole idle time later
            self._expiry = asyncio.get_running_loop().call_later(due, self._expire_spares)

    async def close(self) -> None:
        """Release the spare holds, wait for the queued work to commit, then close the writer's connection."""
        self._closing = True  # no settle takes a spare from now on
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await asyncio.gather(*self._alone_running, return_exceptions=True)  # lone statements (their spares go back)
        if self._spares is not None:
            for hold in self._spares.drain():
                self._release_later(hold, "spare hold not used")
            self._start_writer()
        if self._writer is not None:
            await self._writer
        await self._transactions.close()

    def _run_now(
        self, settles: list[Settle], reserves: list[tuple[HoldRequest, Hold]], spares: Sequence[Spare] = ()
    ) -> list[Result] | None:
        """A lone call's operation runs right here when the backend can do it without waiting (SQLite with the write
        lock free): no writer task, no future. None otherwise; also when other calls are in flight, whose operations
        are better committed together."""
        if not self._lone():
            return None
        work = partial(run_batch, settles=settles, reserves=reserves, spares=spares)
        return self._transactions.run_now(work, 1, durable=bool(settles))

    def _lone(self) -> bool:
        """No other call in flight in this process, nothing queued, no batch being written."""
        if self._in_flight > 1 or self._settles or self._reserves:
            return False
        return self._writer is None or self._writer.done()

    async def _reserve_alone(
        self, alone: db.DriverTransactions, request: HoldRequest, hold: Hold
    ) -> list[Result] | None:
        """[the hold] if the one-statement reserve took it (a trial call's, maybe); None to run the general batch.
        If the caller goes away meanwhile, the statement still finishes, and a hold it took is released (uncharged)
        by the next batch."""
        work = ledger_alone.reserve(alone.alone, request=request, hold=hold, now=_now())
        running: asyncio.Future[Hold | None] = asyncio.ensure_future(work)
        self._alone_running.add(running)
        running.add_done_callback(self._alone_running.discard)
        try:
            taken = await asyncio.shield(running)
        except asyncio.CancelledError:
            running.add_done_callback(self._release_if_taken)
            raise
        return None if taken is None else [taken]

    def _release_if_taken(self, running: asyncio.Future[Hold | None] | asyncio.Future[Result]) -> None:
        """A reserve that took a hold for a caller who is gone: the next batch releases it, uncharged."""
        if not running.done() or running.cancelled() or running.exception() is not None:
            return
        if isinstance(taken := running.result(), Hold):
            self._release_later(taken, "caller went away")
            self._start_writer()

    async def _queue(self, queue: list[_Waiting[Op]], op: Op) -> Result:
        waiting = _Waiting(op, asyncio.get_running_loop().create_future())
        queue.append(waiting)
        self._start_writer()
        try:
            return await waiting.answer
        except asyncio.CancelledError:
            self._release_if_taken(waiting.answer)  # answered, but its caller was cancelled before it resumed
            raise

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="ledger-writer")

    async def _write(self) -> None:
        """Commit batches until the queues are empty; each waiter is answered after its batch commits."""
        while self._settles or self._reserves:
            settles, self._settles = self._settles[: self._max_batch], self._settles[self._max_batch :]
            room = self._max_batch - len(settles)
            reserves = [w for w in self._reserves[:room] if not w.answer.cancelled()]  # not run: nothing to undo
            self._reserves = self._reserves[room:]
            if self._alone is not None and self._together_on:
                settles, reserves = await self._together(self._alone, settles, reserves)
            if settles or reserves:
                await self._batch(settles, reserves)

    async def _batch(self, settles: list[_Waiting[Settle]], reserves: list[_Waiting[tuple[HoldRequest, Hold]]]) -> None:
        batch = partial(run_batch, settles=[w.op for w in settles], reserves=[w.op for w in reserves])
        answers = [w.answer for w in settles] + [w.answer for w in reserves]
        results: list[Result | Exception]
        try:
            # Reserves alone need not wait for the disk: the call's settle commits durably, and with it them.
            run = self._transactions.run(batch, len(answers), durable=bool(settles))
            results = list(await asyncio.shield(run))
        except Exception as exc:  # noqa: BLE001 - nothing committed: every waiter of the batch gets the error
            results = [exc] * len(answers)
        except asyncio.CancelledError:  # shutting down mid-batch: its outcome is unknown to the waiters
            for answer in answers:
                answer.cancel()
            raise
        for answer, result in zip(answers, results, strict=True):
            self._deliver(answer, result)

    async def _together(
        self,
        alone: db.DriverTransactions,
        settles: list[_Waiting[Settle]],
        reserves: list[_Waiting[tuple[HoldRequest, Hold]]],
    ) -> tuple[list[_Waiting[Settle]], list[_Waiting[tuple[HoldRequest, Hold]]]]:
        """PostgreSQL: the lone-call statements of the batch's paid settles and of its reserves, each group sent at
        once (ledger_alone.settle_many, reserve_many: one round trip and one transaction each, instead of about a
        dozen round trips for the batch), the two groups side by side on two connections (both lock users in
        ascending id, so they cannot deadlock). Returns what they did not do (a guard refused, a hold was not open,
        a group was rolled back), in order, for the general batch, which finds out why: a reserve refused for a
        balance that a settle of the same batch was refunding is tried again there, after it."""
        now = _now()
        try:
            quick = [w for w in settles if isinstance(w.op, Settlement) and ledger_alone.may_settle_alone(w.op)]
            ops = [w.op for w in quick if isinstance(w.op, Settlement)]
            quick_reserves = [w for w in reserves if ledger_alone.may_reserve_alone(w.op[0])]
            charges, taken = await asyncio.shield(
                asyncio.gather(
                    ledger_alone.settle_many(alone.alone_many, ops, now) if ops else _nothing(),
                    ledger_alone.reserve_many(alone.alone_many, [w.op for w in quick_reserves], now)
                    if quick_reserves
                    else _nothing(),
                )
            )
            settles = self._deliver_done(settles, quick, charges)
            reserves = self._deliver_done(reserves, quick_reserves, taken)
        except asyncio.CancelledError:  # shutting down: the outcome is unknown to the waiters
            for answer in [w.answer for w in settles] + [w.answer for w in reserves]:
                answer.cancel()
            raise
        return settles, reserves

    def _deliver_done(
        self, waiting: list[_Waiting[Op]], sent: list[_Waiting[Op]], results: Sequence[Result]
    ) -> list[_Waiting[Op]]:
        """Answer each sent operation that has its result; the others (None) stay, in order, for the general batch."""
        done: set[int] = set()
        for w, result in zip(sent, results, strict=True):
            if result is not None:
                self._deliver(w.answer, result)
                done.add(id(w))
        return [w for w in waiting if id(w) not in done]

    def _deliver(self, answer: asyncio.Future[Result], result: Result | Exception) -> None:
        if answer.cancelled() and isinstance(result, Hold):
            self._release_later(result, "caller went away")
        _answer(answer, result)

    def _release_later(self, hold: Hold, note: str) -> None:
        """A hold nobody will use (a reserve committed after its caller went away, an idle spare): the next batch
        releases it, uncharged. If that batch fails, the release is queued again a second later (until the ledger
        closes: then repair releases it)."""
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(partial(self._released, hold, note))
        self._settles.append(_Waiting(Release(hold, hold.id, note), answer))

    def _released(self, hold: Hold, note: str, answer: asyncio.Future[Result]) -> None:
        if answer.cancelled() or answer.exception() is None or self._closing:
            return
        asyncio.get_running_loop().call_later(RELEASE_RETRY_SECONDS, self._release_again, hold, note)

    def _release_again(self, hold: Hold, note: str) -> None:
        if not self._closing:
            self._release_later(hold, note)
            self._start_writer()


async def _nothing() -> list[Any]:
    return []


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _answer(future: asyncio.Future[Result], result: Result | Exception) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def new_owner() -> str:
    """A ledger's hold id prefix: random, so every process's holds are its own (storage.ledger_owners)."""
    return "hold_" + secrets.token_hex(8)
