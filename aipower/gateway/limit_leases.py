"""Shared rate limits admitted from leases: most calls skip the round trip to the shared store. Domain layer.

With limits shared through Redis, every call used to make two round trips to it: the admission and the finish. A
`LeasedLimiter` in front of the shared store takes a little more than a call needs when it admits one (a lease): for
each window, up to LEASE_CALLS more calls' worth, and for the key's concurrency slot, up to LEASE_SLOTS more holds.
The next calls of the same key are admitted here from what is left, and a finished call's slot hold stays here for
the next call instead of going back. Completion tokens are taken from the lease too; past it they are owed, and go
to the store with the next call's ask (so the store checks that call against them) or within a second.

Exactness. The shared store counts every lease in full when it grants it, so all replicas together never admit
more than a limit: a lease only moves units from the store to one process ahead of use. What a lease holds and this
process does not use may refuse another replica's call meanwhile, so a replica can see a limit up to the other
replicas' leases early. That is bounded: a lease is at most 1/SHARE of what the window had left (so near a limit
leases shrink to nothing and admission is exact call by call), and what sits unused for IDLE_SECONDS goes back (a
window's count, and slot holds, which another replica can then take). A limit lowered meanwhile applies at once: a
lease taken under a higher limit admits nothing more here, and the store decides. `AIPOWER_REDIS_LIMIT_LEASES=0`
turns leases off (every call asks the store).

A process that dies keeps its leases until the window ends, and its slot holds for at most HOLD_TTL: a hold taken
here lives that long on the store unless this process moves its deadline on (every KEEP_SECONDS, for the holds of
its calls in flight too). While the store cannot be reached for longer than HOLD_TTL, the holds of calls still
running may lapse (another process may then admit up to that many more calls at once); so may those of calls still
running after close() (the server closes the limiter once its calls are done), and hosts' clocks must agree within
HOLD_TTL - KEEP_SECONDS (deadlines are each process's time, compared with the others').

Where a lease's units can stay counted longer than they are used (never more admitted, sometimes fewer): a lease
whose answer is lost (a Redis timeout: the script may have run) until its window ends. A give-back that fails is
sent again under the same id (gateway.lease_returns), so what it carries is applied once. A caller that goes away
while its lease is on its way loses nothing: what the lease took becomes this process's, unused. If Redis loses its
data (a restart without persistence), a later give-back subtracts from the new counts, by at most this process's
leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from aipower.gateway.lease_returns import Returns
from aipower.gateway.limits import Batch, Check, RateLimiter, Slot, Window, window_end

logger = logging.getLogger(__name__)

LEASE_CALLS = 16  # a window's lease: up to this many more calls of the same cost
LEASE_SLOTS = 4  # slot holds taken besides the call's own
SHARE = 8  # a lease takes at most 1/SHARE of what the window (or the slot) has left
IDLE_SECONDS = 1.0  # a lease unused this long goes back
REUSE_SECONDS = 60.0  # a slot hold serves later calls for this long after it was taken
HOLD_TTL = 60  # a slot hold's deadline on the store, seconds ahead; moved on while this process lives (KEEP_SECONDS)
KEEP_SECONDS = 20.0
MAX_CALL_SECONDS = 900.0  # a hold granted this long ago is no longer kept alive (as plain admission's deadline)

Outcome = Literal["granted", "refused", "failed", "cancelled"]  # of a lease being taken, for the calls waiting on it


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
        slot_ttl: int,
    ) -> Lease:
        """`admit` at time `now`, taking up to `extras[i]` more on check i and up to `spare_slots` more slot holds,
        each at most 1/share of what is left; the slot holds are good for `slot_ttl` seconds unless kept."""

    async def keep(self, slot_key: str, tokens: Sequence[str], ttl: int, now: float) -> None:
        """Move each of these slot holds' deadlines to now + ttl (a hold already freed stays free)."""

    async def give_back(
        self, slot_key: str | None, tokens: Sequence[str], unused: Sequence[tuple[Check, float]], send_id: str = ""
    ) -> None:
        """Release slot holds, and take each (check, a time inside its window) check.cost off that window's count (add
        it when it is below 0: usage owed); the counts at most once per `send_id` (a send tried again)."""


@dataclass(slots=True)
class _Allowance:
    """What this process may still admit in one window of one counter."""

    end: float  # the window's end
    left: int  # counted by the source, not yet used here
    counted: int  # the source's count after the last lease (what the response headers report, less `left`)
    touched: float
    owed: int = 0  # usage counted here past the lease, not yet added on the source (sent with the next ask)
    limit: int = 0  # the limit the lease was taken under: a lower one now, and the source decides
    per_call: int = 0  # usage counted after admission (completion tokens), per call, lately: leases cover it too

    def fits(self, check: Check) -> bool:
        """The call stays within the limit it carries, as far as this process knows (the source knows better when the
        limit was lowered since the lease: other processes' calls count too)."""
        return check.limit >= self.limit and self.used() + check.cost <= check.limit

    def used(self) -> int:
        """The count as this process sees it: the source's, less what is left of the lease, plus what is owed."""
        return self.counted - self.left + self.owed


@dataclass(slots=True)
class _Hold:
    """A slot hold kept here between calls."""

    token: str
    taken: float  # when the source granted it
    free_since: float


class LeasedLimiter:
    def __init__(self, source: LeaseSource, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._allowances: dict[tuple[str, int], _Allowance] = {}
        self._free: dict[str, deque[_Hold]] = {}  # slot key -> holds no call is using, longest free first
        # token -> (slot key, when granted), for every hold here, in use by a call or free
        self._taken: dict[str, tuple[str, float]] = {}
        self._kept_at = 0.0  # when the holds' deadlines were last moved on
        self._flights: dict[tuple[tuple[str, ...], str], asyncio.Future[Outcome]] = {}  # leases being taken, by key
        self._leasing = 0  # admissions between asking the source and keeping what it granted (close waits for them)
        self._leased = asyncio.Event()
        self._orphans: set[asyncio.Future[Lease]] = set()  # leases still running whose callers went away
        self._returns = Returns(source.give_back, source.keep)
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        """From the leases when they cover the call; else from the source, taking a lease. Calls of the same key
        that find no lease wait for the one being taken (one round trip for a burst, not one each); if that one is
        refused, or failed, they ask the source for exactly what they need, each on its own (together in one
        exchange); if its caller went away, they start over."""
        flight = (tuple(c.key for c in checks), "" if slot is None else slot.key)
        while True:
            if self._closed:
                return await self._source.admit(checks, slot)
            now = self._clock()
            covered = self._covered(checks, now)
            if all(a is not None for a in covered) and (slot is None or self._has_hold(slot.key, now)):
                return self._admit_here(checks, covered, slot, now)
            taking = self._flights.get(flight)
            if taking is None:
                return await self._lease(checks, slot, flight)
            if await asyncio.shield(taking) in ("refused", "failed"):
                return await self._lease(checks, slot, None)

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        now = self._clock()
        held = self._taken.get(slot_token) if slot_key is not None else None
        taken = None if held is None else held[1]
        if slot_key is not None and taken is not None:
            if now - taken < REUSE_SECONDS and not self._closed:
                self._free.setdefault(slot_key, deque()).append(_Hold(slot_token, taken, now))
                slot_key = None
            else:
                del self._taken[slot_token]
        for u in usage:
            self._note_per_call(u)
        rest = [u for u in usage if not self._take(u, now)]
        self._schedule()
        if slot_key is not None or rest:
            await self._source.finish(slot_key, rest, slot_token)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        return await self._source.hit(key, limit, window_seconds, cost)

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        if not self._take(Check(key, 0, window_seconds, cost), self._clock()):
            await self._source.add(key, window_seconds, cost)
        self._schedule()

    def forget(self, slot_token: str) -> None:
        """The call was finished elsewhere (the local limiter, during an outage): its hold is no longer kept alive and
        lapses on the store within HOLD_TTL."""
        self._taken.pop(slot_token, None)

    async def close(self) -> None:
        """Wait for the leases being taken, give every lease back (holds still in use go back as their calls
        finish), then close the source."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        while self._leasing:
            self._leased.clear()
            await self._leased.wait()
        await asyncio.gather(*self._orphans, return_exceptions=True)
        self._give_back(self._clock(), everything=True)
        await self._returns.flush(self._clock())
        await self._source.close()

    def _covered(self, checks: Sequence[Check], now: float) -> list[_Allowance | None]:
        """Per check, the lease that covers it (its window, its cost, within the limit it carries now), or None."""
        covered: list[_Allowance | None] = []
        for c in checks:
            a = self._live(c, now)
            covered.append(a if a is not None and a.left >= c.cost and a.fits(c) else None)
        return covered

    def _live(self, check: Check, now: float) -> _Allowance | None:
        """This process's lease of the check's current window, if it has one."""
        a = self._allowances.get((check.key, check.window_seconds))
        return a if a is not None and a.end == window_end(now, check.window_seconds) else None

    def _has_hold(self, slot_key: str, now: float) -> bool:
        """A free hold young enough to reuse; older ones at the front go back to the source."""
        free = self._free.get(slot_key)
        while free and now - free[0].taken >= REUSE_SECONDS:
            stale = free.popleft()
            self._taken.pop(stale.token, None)
            self._returns.release(slot_key, stale.token, stale.taken)
            self._schedule()
        return bool(free)

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

    async def _lease(
        self, checks: Sequence[Check], slot: Slot | None, flight: tuple[tuple[str, ...], str] | None
    ) -> Batch:
        """Ask the source for what the leases do not cover, with a lease on top (none when `flight` is None: a lease
        of the key was just refused); what they cover, in whole or in part, is taken here (and put back if the
        source refuses the call). The source's answer is kept even if the caller goes away meanwhile."""
        now = self._clock()
        taken = [self._take_part(c, now) for c in checks]
        held = [self._live(c, now) for c in checks]  # the leases taken from (the sweep may forget them meanwhile)
        asked = [i for i, (c, t) in enumerate(zip(checks, taken, strict=True)) if t < c.cost or held[i] is None]
        owed = [self._owed_now(held[i]) if i in asked else 0 for i in range(len(checks))]  # checked with the call
        ask = [Check(c.key, c.limit, c.window_seconds, c.cost - taken[i] + owed[i]) for i, c in enumerate(checks)]
        hold = self._pop_hold(slot, now)
        ask_slot = slot if hold is None else None
        extras = [0 if flight is None else (c.cost + self._per_call(c)) * LEASE_CALLS for c in checks]
        spare = LEASE_SLOTS if ask_slot is not None and flight is not None else 0
        taking: asyncio.Future[Outcome] | None = None
        if flight is not None and flight not in self._flights:
            taking = self._flights[flight] = asyncio.get_running_loop().create_future()
        outcome: Outcome = "failed"
        self._leasing += 1
        try:
            source = self._source.lease(
                [ask[i] for i in asked], ask_slot, [extras[i] for i in asked], spare, SHARE, now, HOLD_TTL
            )
            running = asyncio.ensure_future(source)
            try:
                lease = await asyncio.shield(running)
            except asyncio.CancelledError:  # what it takes becomes this process's lease, unused
                outcome = "cancelled"
                self._orphans.add(running)
                asked_owed = [owed[i] for i in asked]
                running.add_done_callback(
                    partial(self._keep_orphan, [ask[i] for i in asked], asked_owed, ask_slot, now)
                )
                raise
            outcome = "granted" if lease.batch.admitted else "refused"
            if outcome == "refused":
                return self._refused(checks, asked, lease, now)
            return self._merge(checks, held, [a.cost for a in ask], asked, slot, lease, hold, now)
        finally:
            if outcome != "granted":
                self._put_back(held, taken, owed if outcome != "cancelled" else [], slot, hold)
            if taking is not None and flight is not None:
                del self._flights[flight]
                taking.set_result(outcome)
            self._leasing -= 1
            self._leased.set()

    def _note_per_call(self, usage: Check) -> None:
        a = self._allowances.get((usage.key, usage.window_seconds))
        if a is not None:
            a.per_call = (3 * a.per_call + usage.cost) // 4 if a.per_call else usage.cost

    def _per_call(self, check: Check) -> int:
        """What calls of this counter added after admission lately (their completion tokens), in this window or the
        last: a lease of a tokens limit sized by the prompt alone lasted two or three calls."""
        a = self._allowances.get((check.key, check.window_seconds))
        return 0 if a is None else a.per_call

    @staticmethod
    def _owed_now(a: _Allowance | None) -> int:
        """Usage owed on a window, taken off the lease to go with the call that asks next (so the source checks the
        call against it); put back if that call is not admitted."""
        if a is None:
            return 0
        owed, a.owed = a.owed, 0
        return owed

    def _take_part(self, check: Check, now: float) -> int:
        """Take what this process's lease of the window has toward the call's cost (all of it when it covers it);
        nothing if the call would pass the limit it carries now (the source decides)."""
        a = self._live(check, now)
        if a is None or not a.fits(check):
            return 0
        part = min(a.left, check.cost)
        a.left -= part
        a.touched = now
        return part

    def _put_back(
        self,
        held: Sequence[_Allowance | None],
        taken: Sequence[int],
        owed: Sequence[int],
        slot: Slot | None,
        hold: _Hold | None,
    ) -> None:
        """Undo _take_part, _owed_now (unless the ask may still arrive: a lease left running for a caller gone) and
        _pop_hold for a call the source did not admit. (A lease the sweep gave back meanwhile went back without what
        the call took: that part stays counted until its window ends.)"""
        for a, part in zip(held, taken, strict=True):
            if part and a is not None:
                a.left += part
        for a, part in zip(held, owed, strict=False):
            if part and a is not None:
                a.owed += part
        if hold is not None and slot is not None:
            self._free.setdefault(slot.key, deque()).appendleft(hold)
            self._schedule()

    def _merge(
        self,
        checks: Sequence[Check],
        held: Sequence[_Allowance | None],
        asked_costs: Sequence[int],
        asked: Sequence[int],
        slot: Slot | None,
        lease: Lease,
        hold: _Hold | None,
        now: float,
    ) -> Batch:
        """The admitted call's windows (its own use counted), keeping what the lease took beyond it."""
        answers = dict(zip(asked, zip(lease.batch.windows, lease.counted, strict=True), strict=True))
        windows = []
        for i, c in enumerate(checks):
            a = self._live(c, now) or (None if i in answers else held[i])  # (taken from in full: the lease it was)
            if i in answers:
                window, counted = answers[i]
                if a is None:
                    a = self._allowances[(c.key, c.window_seconds)] = _Allowance(
                        window_end(now, c.window_seconds), 0, 0, now, limit=c.limit, per_call=self._per_call(c)
                    )
                a.left += counted - asked_costs[i]
                a.counted = window.used
                a.limit = c.limit
                paid = min(a.left, a.owed)
                a.left, a.owed = a.left - paid, a.owed - paid
            assert a is not None
            a.touched = now
            windows.append(Window(True, c.limit, a.used(), a.end - now))
        token = lease.batch.slot_token
        if hold is not None:
            token = hold.token
        elif slot is not None:
            self._taken[token] = (slot.key, now)
            self._add_holds(slot.key, lease.spare_slots, now)
        self._schedule()
        return Batch(tuple(windows), True, token)

    def _add_holds(self, slot_key: str, tokens: Sequence[str], now: float) -> None:
        free = self._free.setdefault(slot_key, deque())
        for token in tokens:
            self._taken[token] = (slot_key, now)
            free.append(_Hold(token, now, now))

    def _keep_orphan(
        self, ask: Sequence[Check], owed: Sequence[int], slot: Slot | None, now: float, running: asyncio.Future[Lease]
    ) -> None:
        """A lease whose caller went away before it was answered: all it took is this process's, unused (less the
        usage owed it carried); if it was not admitted, that usage is owed again."""
        self._orphans.discard(running)
        lease = None if running.cancelled() or running.exception() is not None else running.result()
        for i, c in enumerate(ask):
            a = self._live(c, now)
            if lease is None or not lease.batch.admitted:
                if a is not None:
                    a.owed += owed[i]
                continue
            if a is None:
                a = self._allowances[(c.key, c.window_seconds)] = _Allowance(
                    window_end(now, c.window_seconds), 0, 0, now, limit=c.limit
                )
            a.left += lease.counted[i] - owed[i]
        if lease is None or not lease.batch.admitted:
            return
        if slot is not None:
            self._add_holds(slot.key, [lease.batch.slot_token, *lease.spare_slots], now)
        self._schedule()

    def _refused(self, checks: Sequence[Check], asked: Sequence[int], lease: Lease, now: float) -> Batch:
        """A refused call's windows: the source's for those it was asked about; the others passed (as they stand)."""
        answers = dict(zip(asked, lease.batch.windows, strict=True))
        windows = []
        for i, c in enumerate(checks):
            a = self._live(c, now)
            here = Window(True, c.limit, a.used() if a is not None else 0, window_end(now, c.window_seconds) - now)
            windows.append(answers.get(i, here))
        return Batch(tuple(windows), lease.batch.slot_free)

    def _take(self, usage: Check, now: float) -> bool:
        """Count `usage` here if this process holds a lease of its window: from what is left of it, and past that as
        owed (sent with the next call that asks the source for this window, or by the sweep within a second)."""
        a = self._live(usage, now)
        if a is None:
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
        windows (what they owe no longer counts). True while there is something left to watch."""
        for (key, seconds), a in list(self._allowances.items()):
            if a.end <= now and not everything:
                del self._allowances[(key, seconds)]
                continue
            owed, a.owed = a.owed, 0
            self._returns.owe(Check(key, 0, seconds, owed), a.end - seconds / 2)
            if everything or now - a.touched >= IDLE_SECONDS:
                del self._allowances[(key, seconds)]
                self._returns.unused(Check(key, 0, seconds, a.left), a.end - seconds / 2)
        for slot_key, free in list(self._free.items()):
            kept: deque[_Hold] = deque()
            for h in free:
                if everything or now - h.free_since >= IDLE_SECONDS or now - h.taken >= REUSE_SECONDS:
                    self._taken.pop(h.token, None)
                    self._returns.release(slot_key, h.token, h.taken)
                else:
                    kept.append(h)
            if kept:
                self._free[slot_key] = kept
            else:
                del self._free[slot_key]
        if self._taken and now - self._kept_at >= KEEP_SECONDS and not everything:
            self._kept_at = now
            by_slot: dict[str, list[str]] = {}
            for token, (slot_key, taken) in list(self._taken.items()):
                if now - taken >= MAX_CALL_SECONDS:  # a backstop: no call lasts this long; let it lapse
                    del self._taken[token]
                    continue
                by_slot.setdefault(slot_key, []).append(token)
            for slot_key, tokens in by_slot.items():
                self._returns.keep(slot_key, tokens, HOLD_TTL, now)
        pending = self._returns.send(now)
        return bool(self._allowances or self._free or self._taken or pending)
