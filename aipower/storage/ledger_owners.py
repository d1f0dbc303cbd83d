"""Which process owns each open hold, and whether it is alive: repair releases a dead process's holds within about a
minute, and never a live one's. Storage layer.

Every SqlLedger names its holds with a random prefix of OWNER_LENGTH characters: its owner id. Its process keeps a
row in `ledger_owners` (HoldKeeper): written before its first call, its `seen` moved on every `beat` seconds, and
marked `gone` when the ledger closes cleanly. Times are the database's clock (on PostgreSQL, replicas' clocks may
differ). An open hold is abandoned when its owner:
- is gone (closed: what it left open is a release that failed, or a lone settle whose answer was lost), or
- has not beaten for DEAD_BEATS beats (killed, crashed, frozen, cut off from the database);
- has no row at all (a process of a version before this one): then only once it is older than the age given, as
  repair worked before (AIPOWER_STALE_HOLD_SECONDS, `ledger verify --repair --older-than`).
A live owner's holds are never abandoned, however old: a stream may run for hours. Every live process sweeps, once
a beat, releasing the abandoned holds of dead and gone owners (ledger.release: uncharged; if a call was still
running after all, its settle charges it, as for a hold a crash lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import BigInteger, ColumnElement, Integer, and_, cast, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower.storage import ledger
from aipower.storage.tables import holds, ledger_owners

logger = logging.getLogger(__name__)

OWNER_LENGTH = len("hold_") + 16  # SqlLedger's hold id prefix: "hold_" and 16 hex digits
DEAD_BEATS = 4  # an owner that missed this many beats is dead
FORGET_SECONDS = 86_400  # an owner's row goes a day after its last beat, once none of its holds is open
o = ledger_owners.c


def _now(engine: AsyncEngine) -> ColumnElement[int]:
    """The database's clock, in whole seconds since the epoch."""
    if engine.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", func.now())), BigInteger)
    return cast(func.strftime("%s", "now"), Integer)


async def register(engine: AsyncEngine, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(ledger_owners).values(owner=owner, started=_now(engine), seen=_now(engine)))


async def beat(engine: AsyncEngine, owner: str) -> None:
    async with engine.begin() as conn:
        result = await conn.execute(update(ledger_owners).where(o.owner == owner).values(seen=_now(engine), gone=False))
        if result.rowcount == 0:  # removed as long dead (this process was cut off for a day): back, alive
            await conn.execute(insert(ledger_owners).values(owner=owner, started=_now(engine), seen=_now(engine)))


async def leave(engine: AsyncEngine, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(ledger_owners).where(o.owner == owner).values(gone=True))


async def abandoned(engine: AsyncEngine, beat_seconds: float, older_than: float | None) -> list[str]:
    """The open holds whose owner is gone or dead; with `older_than` (seconds), also those older than it whose owner
    left no row."""
    owner = func.substr(holds.c.id, 1, OWNER_LENGTH)
    dead = o.gone.is_(True) | (o.seen < _now(engine) - int(beat_seconds * DEAD_BEATS))
    reasons = [and_(o.owner.is_not(None), dead)]
    if older_than is not None:  # the age rule, for holds of processes that kept no row (before migration 0009)
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        reasons.append(and_(o.owner.is_(None), holds.c.created_at < cutoff))
    query = (
        select(holds.c.id).outerjoin(ledger_owners, o.owner == owner).where(holds.c.settled_at.is_(None), or_(*reasons))
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).scalars())


async def sweep(engine: AsyncEngine, beat_seconds: float, older_than: float | None = None) -> int:
    """Release the abandoned holds (see abandoned()) and forget owners dead for a day with none left; how many holds
    this call released."""
    released = 0
    for hold_id in await abandoned(engine, beat_seconds, older_than):
        released += await ledger.release(engine, hold_id)
    has_open = select(holds.c.id).where(
        holds.c.settled_at.is_(None), func.substr(holds.c.id, 1, OWNER_LENGTH) == o.owner
    )
    forgotten = delete(ledger_owners).where(o.seen < _now(engine) - FORGET_SECONDS, ~has_open.exists())
    async with engine.begin() as conn:
        await conn.execute(forgotten)
    return released


class HoldKeeper:
    """One process's row in ledger_owners, beaten every `beat_seconds`, and its sweep of dead owners' holds."""

    def __init__(self, engine: AsyncEngine, owner: str, beat_seconds: float) -> None:
        self._engine = engine
        self._owner = owner
        self._beat = beat_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Before the ledger's first hold: a hold is never written without its owner's row."""
        assert len(self._owner) == OWNER_LENGTH, self._owner
        await register(self._engine, self._owner)
        self._task = asyncio.create_task(self._run(), name="hold-keeper")

    async def close(self) -> None:
        """After the ledger closed: what it left open is abandoned at once (the next sweep of any process)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await leave(self._engine, self._owner)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._beat)
            try:
                await beat(self._engine, self._owner)
                released = await sweep(self._engine, self._beat)
            except Exception:  # a database hiccup: the next beat tries again (DEAD_BEATS allow for it)
                logger.warning("ledger: could not beat or sweep (%s owner); trying again", self._owner, exc_info=True)
                continue
            if released:
                logger.warning("ledger: released %d hold(s) of stopped processes (not charged)", released)
