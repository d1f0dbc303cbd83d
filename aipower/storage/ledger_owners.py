"""Which process owns each open hold, and whether it is alive: stopped processes' holds are released within about a
minute, and never a live one's. Storage layer.

Every SqlLedger names its holds with a random prefix of OWNER_LENGTH characters: its owner id. Its process keeps a
row in `ledger_owners` (HoldKeeper): written before its first call, its `seen` moved on every beat, and marked `gone`
when the ledger closes cleanly. The row carries `dead_after`: the seconds without a beat after which the owner counts
as dead (DEAD_BEATS of its own beats, rounded up, and a second), so every process and `ledger verify --repair` judge
an owner by its own beat, whatever theirs. Times are the database's clock, in whole seconds (replicas' clocks may
differ). An open hold is abandoned when its owner:
- is gone (closed: what it left open is a release that failed, or a lone settle whose answer was lost), or
- has not beaten for its `dead_after` (killed, crashed, frozen, cut off from the database);
- has no row at all (a process of a version before this one): then only once it is older than the age given, as
  repair worked before (AIPOWER_STALE_HOLD_SECONDS, `ledger verify --repair --older-than`).

The holds of an owner that keeps beating are never abandoned, however old: a stream may run for hours. A process
that cannot beat fences itself: once its last good beat is half its dead_after old (FENCE_BEATS beats), its ledger
refuses new holds (503), takes no spare, and gives back a hold whose reserve finished after the fence went up. What
the fence cannot cover: calls already running when it went up. If the process stays cut off past its dead_after,
others release their holds, and their settles, once the database answers again, charge at most what the balance
holds then (as for a hold a crash lost); the loss is bounded by those calls. Every live process also sweeps once a
beat, in a task of its own (a long sweep must not delay its beat), releasing abandoned holds (release(): uncharged;
if a call was still running after all, its settle charges it, as for a hold a crash lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from functools import partial

from sqlalchemy import BigInteger, ColumnElement, Integer, and_, cast, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.gateway.protocols import BillingMode, Hold
from aipower.storage.batch import AlchemyBatch
from aipower.storage.ledger_sql import Release, run_batch
from aipower.storage.tables import holds, ledger_owners

logger = logging.getLogger(__name__)

OWNER_LENGTH = len("hold_") + 16  # SqlLedger's hold id prefix: "hold_" and 16 hex digits
DEAD_BEATS = 4  # an owner that missed this many of its beats is dead
FENCE_BEATS = 2  # a process whose last good beat is this many beats old takes no new hold
BEAT_TIMEOUT = 1.0  # at least this long for a beat (SQLite's write lock may keep one waiting a few hundred ms)
FORGET_SECONDS = 86_400  # an owner's row goes a day after its last beat, once none of its holds is open
o = ledger_owners.c


def dead_after(beat_seconds: float) -> int:
    """Whole seconds without a beat after which an owner beating every `beat_seconds` is dead (the clock is in whole
    seconds, so a second more)."""
    return math.ceil(beat_seconds * DEAD_BEATS) + 1


def _now(engine: AsyncEngine) -> ColumnElement[int]:
    """The database's clock, in whole seconds since the epoch."""
    if engine.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", func.now())), BigInteger)
    return cast(func.strftime("%s", "now"), Integer)


async def register(engine: AsyncEngine, owner: str, beat_seconds: float) -> None:
    row = {"owner": owner, "started": _now(engine), "seen": _now(engine), "dead_after": dead_after(beat_seconds)}
    async with engine.begin() as conn:
        await conn.execute(insert(ledger_owners).values(row))


async def beat(engine: AsyncEngine, owner: str, beat_seconds: float) -> None:
    async with engine.begin() as conn:
        alive = update(ledger_owners).where(o.owner == owner).values(seen=_now(engine), gone=False)
        if (await conn.execute(alive)).rowcount == 0:  # removed as long dead (cut off for a day): back, alive
            row = {
                "owner": owner,
                "started": _now(engine),
                "seen": _now(engine),
                "dead_after": dead_after(beat_seconds),
            }
            await conn.execute(insert(ledger_owners).values(row))


async def leave(engine: AsyncEngine, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(ledger_owners).where(o.owner == owner).values(gone=True))


async def abandoned(engine: AsyncEngine, older_than: float | None) -> list[str]:
    """The open holds whose owner is gone or dead (by its own dead_after); with `older_than` (seconds), also those
    older than it whose owner left no row."""
    owner = func.substr(holds.c.id, 1, OWNER_LENGTH)
    dead = o.gone.is_(True) | (o.seen + o.dead_after < _now(engine))
    reasons = [and_(o.owner.is_not(None), dead)]
    if older_than is not None:  # the age rule, for holds of processes that kept no row (before migration 0009)
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        reasons.append(and_(o.owner.is_(None), holds.c.created_at < cutoff))
    query = (
        select(holds.c.id).outerjoin(ledger_owners, o.owner == owner).where(holds.c.settled_at.is_(None), or_(*reasons))
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def release(engine: AsyncEngine, hold_id: str) -> bool:
    """Release a hold its process abandoned (it stopped mid-call: storage.ledger_owners): its money goes back,
    uncharged, and its row is deleted, in one transaction. False if it was settled or released meanwhile.

    Deleted, not closed: if its call was still running after all (its process cut off from the database for 4 beats,
    or an older version's call longer than the stale age), that call's settle finds no row and charges the balance
    as for a hold a database crash lost (ledger_sql._settle_lost), log row included, so a served call is paid for,
    from what the balance holds then."""
    async with engine.begin() as conn:
        # A write first: it locks the row (PostgreSQL) or the database (SQLite), so two sweeps of one hold release it
        # once; the second finds it gone and does nothing (it took it for lost and logged so).
        still_open = update(holds).where(holds.c.id == hold_id, holds.c.settled_at.is_(None)).values(mode=holds.c.mode)
        if (await conn.execute(still_open)).rowcount != 1:
            return False
        row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).one()
        hold = Hold(row.id, row.user_id, row.key_id, row.amount_nanos, _mode(row.mode), row.spend_day)
        work = partial(run_batch, settles=[Release(hold, row.request_id, "released by repair")], reserves=[])
        results = await conn.run_sync(lambda sync: work(AlchemyBatch(sync)))
        if results[0] is None:
            return False
        await conn.execute(delete(holds).where(holds.c.id == hold_id))
    return True


def _mode(text: str) -> BillingMode:
    match text:
        case "trial" | "demo" | "balance":
            return text
        case "spare":  # storage.ledger_spares: a balance hold taken for a key's next call
            return "balance"
    raise ValueError(f"unknown billing mode {text!r}")


async def sweep(engine: AsyncEngine, older_than: float | None = None, until: float | None = None) -> int:
    """Release the abandoned holds (see abandoned()), stopping at `until` (time.monotonic(); the rest waits for the
    next sweep), and forget owners dead for a day with none left; how many holds this call released."""
    released = 0
    for hold_id in await abandoned(engine, older_than):
        if until is not None and time.monotonic() > until:
            return released
        released += await release(engine, hold_id)
    has_open = select(holds.c.id).where(
        holds.c.settled_at.is_(None), func.substr(holds.c.id, 1, OWNER_LENGTH) == o.owner
    )
    async with engine.begin() as conn:
        await conn.execute(delete(ledger_owners).where(o.seen < _now(engine) - FORGET_SECONDS, ~has_open.exists()))
    return released


class HoldKeeper:
    """One process's row in ledger_owners, beaten every `beat_seconds`; its fence; its sweep of stopped owners."""

    def __init__(
        self, engine: AsyncEngine, owner: str, beat_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert len(owner) == OWNER_LENGTH, owner
        self._engine = engine
        self._owner = owner
        self._beat = beat_seconds
        self._clock = clock
        self._last_beat = clock()
        self._fence_after = (dead_after(beat_seconds) - 1) / 2  # FENCE_BEATS beats, and more for sub-second beats
        self._beat_timeout = max(beat_seconds, BEAT_TIMEOUT)
        self._tasks: list[asyncio.Task[None]] = []

    def fenced(self) -> bool:
        """True while the last good beat (its start) is older than half the owner's dead_after (about FENCE_BEATS
        beats): others may soon take this process for dead and release its holds, so it must take no more."""
        return self._clock() - self._last_beat > self._fence_after

    async def start(self) -> None:
        """Before the ledger's first hold: a hold is never written without its owner's row."""
        began = self._clock()
        await register(self._engine, self._owner, self._beat)
        self._last_beat = began
        self._tasks = [
            asyncio.create_task(self._beating(), name="hold-keeper-beat"),
            asyncio.create_task(self._sweeping(), name="hold-keeper-sweep"),
        ]

    async def close(self) -> None:
        """After the ledger closed: what it left open is abandoned at once (the next sweep of any process)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await leave(self._engine, self._owner)

    async def _beating(self) -> None:
        due = self._clock() + self._beat
        while True:
            await asyncio.sleep(max(0.0, due - self._clock()))
            due = max(due + self._beat, self._clock())  # on time, not drifting; no burst after a stall
            began = self._clock()
            try:
                await asyncio.wait_for(beat(self._engine, self._owner, self._beat), timeout=self._beat_timeout)
            except Exception:  # a database hiccup or a hung beat: the fence counts from the last good one
                logger.warning(
                    "ledger: heartbeat of %s failed; new holds stop at %d missed beats",
                    self._owner,
                    FENCE_BEATS,
                    exc_info=True,
                )
                continue
            self._last_beat = began

    async def _sweeping(self) -> None:
        while True:
            await asyncio.sleep(self._beat)
            try:
                released = await sweep(self._engine, until=self._clock() + self._beat)
            except Exception:  # a database hiccup: the next sweep tries again
                logger.warning("ledger: sweep of stopped processes' holds failed; trying again", exc_info=True)
                continue
            if released:
                logger.warning("ledger: released %d hold(s) of stopped processes (not charged)", released)
