"""Shared rate limits admitted from leases: most calls skip the round trip to the shared store. Domain layer.

With limits shared through Redis, every call used to make two round trips to it: the admission and the finish. A
`LeasedLimiter` in front of the shared store takes a little more than a call needs when it admits one (a lease): for
each window, up to LEASE_CALLS more calls' worth, and for the key's concurrency slot, up to LEASE_SLOTS more holds.
The next calls of the same key are admitted here from what is left, and a finished call's slot hold stays here for
the next call instead of going back. Completion tokens are taken from the lease too when it has them.

Exactness. The shared store counts every lease in full when it grants it, so all replicas together never admit
more than a limit: a lease only moves units from the store to one process ahead of use. What a lease holds and this
process does not use may refuse another replica's call meanwhile, so a replica can see a limit up to the other
replicas' leases early. That is bounded: a lease is at most 1/SHARE of what the window had left (so near a limit
leases shrink to nothing and admission is exact call by call), and what sits unused for IDLE_SECONDS goes back (a
window's count, and slot holds, which another replica can then take). A process that dies keeps its leases until
the window ends (a slot hold: until its deadline, as a call's own). A limit lowered meanwhile applies at once: a
call is admitted here only within the limit it carries. `AIPOWER_REDIS_LIMIT_LEASES=0` turns leases off (every
call asks the store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aipower.gateway.limits import Batch, Check, RateLimiter, Slot, Window

logger = logging.getLogger(__name__)

LEASE_CALLS = 16  # a window's lease: up to this many more calls of the same cost
LEASE_SLOTS = 4  # slot holds taken besides the call's own
SHARE = 8  # a lease takes at most 1/SHARE of what the window (or the slot) has left
IDLE_SECONDS = 1.0  # a lease unused this long goes back
REUSE_SECONDS = 60.0  # a slot hold serves later calls for this long after it was taken (its deadline is 15 minutes)


@dataclass(frozen=True, slots=True)
class Lease:
    """A source's admission with leases: the batch as `admit` answers it (each window counted with its lease),
    what each check's counter took (its cost plus its lease) and the spare slot holds taken besides the call's."""

    batch: Batch
    counted: tuple[int, ...]
    spare_slots: tuple[str, ...]


class LeaseSource(RateLimiter, Protocol):
    async def lease(
        self,
        checks: Sequence[Check],
        slot: Slot | None,
        extras: Sequence[int],
        spare_slots: int,
        share: int,
        now: float,
    ) -> Lease:
        """`admit` at time `now`, taking up to `extras[i]` more on check i and up to `spare_slots` more slot holds,
        each at most 1/share of what is left."""

    async def give_back(
        self, slot_key: str | None, tokens: Sequence[str], unused: Sequence[tuple[Check, float]]
    ) -> None:
        """Release slot holds, and take each (check, a time inside its window) check.cost off that window's count (add
        it when it is below 0: usage owed)."""


@dataclass(slots=True)
class _Allowance:
    """What this process may still admit in one window of one counter."""

    end: float  # the window's end
    left: int  # counted by the source, not yet used here
    counted: int  # the source's count after the last lease (what the response headers report, less `left`)
    touched: float
    owed: int = 0  # usage counted here past the lease, not yet added on the source (paid from the next lease)

    def used(self) -> int:
        """The count as this process sees it: the source's, less what is left of the lease, plus what is owed."""
        return self.counted - self.left + self.owed


@dataclass(slots=True)
class _Hold:
    """A slot hold kept here between calls."""

    token: str
    taken: float  # when the source granted it (its deadline there is 15 minutes later)
    free_since: float


def window_end(now: float, window_seconds: int) -> float:
    return (now // window_seconds + 1) * window_seconds


class LeasedLimiter:
    def __init__(self, source: LeaseSource, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._allowances: dict[tuple[str, int], _Allowance] = {}
        self._free: dict[str, deque[_Hold]] = {}  # slot key -> holds no call is using, longest free first
        self._taken: dict[str, float] = {}  # token -> when granted, for every hold kept here (used or free)
        self._flights: dict[tuple[tuple[str, ...], str], asyncio.Future[bool]] = {}  # leases being taken, by key
        self._sweep: asyncio.TimerHandle | None = None
        self._giving: set[asyncio.Future[None]] = set()
        self._closed = False

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        """From the leases when they cover the call; else from the source, taking a lease. Calls of the same key
        that find no lease wait for one that is being taken (one round trip for a burst, not one each), unless it
        was refused."""
        if self._closed:
            return await self._source.admit(checks, slot)
        flight = (tuple(c.key for c in checks), "" if slot is None else slot.key)
        while True:
            now = self._clock()
            covered = self._covered(checks, now)
            if all(a is not None for a in covered) and (slot is None or self._has_hold(slot.key, now)):
                return self._admit_here(checks, covered, slot, now)
            taking = self._flights.get(flight)
            if taking is None or not await asyncio.shield(taking):
                return await self._lease(checks, slot, flight)

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        now = self._clock()
        taken = self._taken.get(slot_token) if slot_key is not None else None
        if slot_key is not None and taken is not None:
            if now - taken < REUSE_SECONDS and not self._closed:
                self._free.setdefault(slot_key, deque()).append(_Hold(slot_token, taken, now))
                slot_key = None
            else:
                del self._taken[slot_token]
        rest = [u for u in usage if not self._take(u, now)]
        if slot_key is not None or rest:
            await self._source.finish(slot_key, rest, slot_token)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        return await self._source.hit(key, limit, window_seconds, cost)

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        if not self._take(Check(key, 0, window_seconds, cost), self._clock()):
            await self._source.add(key, window_seconds, cost)

    async def close(self) -> None:
        """Give back every lease (holds still in use go back as their calls finish), then close the source."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        self._give_back(float("inf"), everything=True)
        await asyncio.gather(*self._giving, return_exceptions=True)
        await self._source.close()

    def _covered(self, checks: Sequence[Check], now: float) -> list[_Allowance | None]:
        """Per check, the lease that covers it (its window, its cost, within the limit it carries now), or None."""
        covered: list[_Allowance | None] = []
        for c in checks:
            a = self._allowances.get((c.key, c.window_seconds))
            fits = a is not None and a.end == window_end(now, c.window_seconds) and a.left >= c.cost
            if fits and a is not None and a.used() + c.cost <= c.limit:  # (a limit lowered since: no)
                covered.append(a)
            else:
                covered.append(None)
        return covered

    def _has_hold(self, slot_key: str, now: float) -> bool:
        free = self._free.get(slot_key)
        return bool(free) and free is not None and now - free[0].taken < REUSE_SECONDS

    def _pop_hold(self, slot: Slot | None, now: float) -> _Hold | None:
        if slot is None or not self._has_hold(slot.key, now):
            return None
        return self._free[slot.key].popleft()  # the longest free: every hold stays in use, none sits idle

    def _admit_here(
        self, checks: Sequence[Check], covered: Sequence[_Allowance | None], slot: Slot | None, now: float
    ) -> Batch:
        hold = self._pop_hold(slot, now)
        windows = []
        for c, a in zip(checks, covered, strict=True):
            assert a is not None
            a.left -= c.cost
            a.touched = now
            windows.append(Window(True, c.limit, a.used(), a.end - now))
        return Batch(tuple(windows), True, "" if hold is None else hold.token)

    async def _lease(self, checks: Sequence[Check], slot: Slot | None, flight: tuple[tuple[str, ...], str]) -> Batch:
        """Ask the source for what the leases do not cover, with a lease on top; what they cover is taken here (and
        put back if the source refuses the call)."""
        now = self._clock()
        covered = self._covered(checks, now)
        for c, a in zip(checks, covered, strict=True):
            if a is not None:
                a.left -= c.cost
        hold = self._pop_hold(slot, now)
        ask = [c for c, a in zip(checks, covered, strict=True) if a is None]
        ask_slot = slot if hold is None else None
        mine = flight not in self._flights  # else one taken after a refusal: this call does not wait for it
        taking = self._flights.setdefault(flight, asyncio.get_running_loop().create_future())
        admitted = False
        try:
            spare = LEASE_SLOTS if ask_slot is not None else 0
            lease = await self._source.lease(ask, ask_slot, [c.cost * LEASE_CALLS for c in ask], spare, SHARE, now)
            admitted = lease.batch.admitted and not self._closed
        finally:
            if mine:
                del self._flights[flight]
                taking.set_result(admitted)
            if not admitted:
                for c, a in zip(checks, covered, strict=True):
                    if a is not None:
                        a.left += c.cost
                if hold is not None and slot is not None:
                    self._free.setdefault(slot.key, deque()).appendleft(hold)
        if not admitted and lease.batch.admitted:  # closed meanwhile: the call goes on, nothing is kept
            return lease.batch
        if not admitted:
            return self._refused(checks, covered, lease, now)
        return self._merge(checks, covered, slot, lease, hold, now)

    def _merge(
        self,
        checks: Sequence[Check],
        covered: Sequence[_Allowance | None],
        slot: Slot | None,
        lease: Lease,
        hold: _Hold | None,
        now: float,
    ) -> Batch:
        """The admitted call's windows (its own use counted), keeping what the lease took beyond it."""
        asked = iter(zip(lease.batch.windows, lease.counted, strict=True))
        windows = []
        for c, a in zip(checks, covered, strict=True):
            if a is None:
                window, counted = next(asked)
                end = window_end(now, c.window_seconds)
                a = self._allowances.get((c.key, c.window_seconds))
                if a is None or a.end != end:
                    a = self._allowances[(c.key, c.window_seconds)] = _Allowance(end, 0, 0, now)
                a.left += counted - c.cost
                a.counted = window.used
                paid = min(a.left, a.owed)
                a.left, a.owed = a.left - paid, a.owed - paid
            a.touched = now
            windows.append(Window(True, c.limit, a.used(), a.end - now))
        token = lease.batch.slot_token
        if hold is not None:
            token = hold.token
        elif slot is not None:
            self._taken[token] = now
            for spare in lease.spare_slots:
                self._taken[spare] = now
                self._free.setdefault(slot.key, deque()).append(_Hold(spare, now, now))
        self._schedule()
        return Batch(tuple(windows), True, token)

    def _refused(
        self, checks: Sequence[Check], covered: Sequence[_Allowance | None], lease: Lease, now: float
    ) -> Batch:
        """A refused call's windows: the source's for those it was asked about; the others passed (as they stand)."""
        asked = iter(lease.batch.windows)
        windows = []
        for c, a in zip(checks, covered, strict=True):
            here = None if a is None else Window(True, c.limit, a.used(), a.end - now)
            windows.append(next(asked) if here is None else here)
        return Batch(tuple(windows), lease.batch.slot_free)

    def _take(self, usage: Check, now: float) -> bool:
        """Count `usage` here if this process holds a lease of its window: from what is left of it, and past that as
        owed (paid from the next lease of the window, or added on the source within a second)."""
        a = self._allowances.get((usage.key, usage.window_seconds))
        if a is None or a.end != window_end(now, usage.window_seconds):
            return False
        paid = min(a.left, usage.cost)
        a.left -= paid
        a.owed += usage.cost - paid
        a.touched = now
        return True

    def _schedule(self) -> None:
        if self._sweep is None and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        if self._give_back(self._clock()):
            self._schedule()

    def _give_back(self, now: float, everything: bool = False) -> bool:
        """Send back what has sat unused for IDLE_SECONDS (everything: all of it) and add what is owed; forget ended
        windows (what they owe no longer counts). True while leases are left to watch."""
        unused: list[tuple[Check, float]] = []
        for (key, seconds), a in list(self._allowances.items()):
            if a.end <= now and not everything:
                del self._allowances[(key, seconds)]
                continue
            amount = -a.owed
            a.owed = 0
            if everything or now - a.touched >= IDLE_SECONDS:
                del self._allowances[(key, seconds)]
                amount += a.left
            if amount:
                unused.append((Check(key, 0, seconds, amount), a.end - seconds / 2))
        for slot_key, free in list(self._free.items()):
            idle: list[_Hold] = []
            kept: deque[_Hold] = deque()
            for h in free:
                gone = everything or now - h.free_since >= IDLE_SECONDS or now - h.taken >= REUSE_SECONDS
                (idle if gone else kept).append(h)
            self._free[slot_key] = kept
            if not kept:
                del self._free[slot_key]
            for h in idle:
                self._taken.pop(h.token, None)
            if idle:
                self._send(slot_key, [h.token for h in idle], [])
        if unused:
            self._send(None, [], unused)
        return bool(self._allowances or self._free)

    def _send(self, slot_key: str | None, tokens: list[str], unused: list[tuple[Check, float]]) -> None:
        giving = asyncio.ensure_future(self._source.give_back(slot_key, tokens, unused))
        self._giving.add(giving)
        giving.add_done_callback(self._given)

    def _given(self, giving: asyncio.Future[None]) -> None:
        self._giving.discard(giving)
        if not giving.cancelled() and giving.exception() is not None:  # they come back by themselves
            logger.warning("limits: could not give unused leases back (%s)", type(giving.exception()).__name__)
