"""Rate limits: the RateLimiter protocol, its in-process implementation, and the rules applied per call. Domain layer.

Windows are fixed and aligned to the clock (a minute window resets at :00), so every process and Redis agree on
them. Requests count 1 at admission; tokens count the prompt estimate plus max_tokens at admission, and the
real completion tokens are added when the call ends (a call may overshoot; the next ones wait for the reset).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Window:
    """The state of one counter after a hit."""

    allowed: bool
    limit: int
    used: int
    reset_seconds: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Check:
    """One window of a batch: add `cost` to `key`'s counter if it stays within `limit` (ignored when finishing)."""

    key: str
    limit: int
    window_seconds: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class Slot:
    """One of `limit` concurrency slots under `key`."""

    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class Batch:
    """The outcome of `admit`: one window per check, in order, and whether the slot was free.

    Admitted, every window is as after its increment. Refused, nothing was counted: each window shows the counter
    as it stands, with allowed=False on those that refused.
    """

    windows: tuple[Window, ...]
    slot_free: bool = True
    slot_token: str = ""  # this call's hold on the slot, to give back in finish() (limiters that need one)

    @property
    def admitted(self) -> bool:
        return self.slot_free and all(w.allowed for w in self.windows)


class RateLimiter(Protocol):
    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        """All or nothing: check every window and the slot; only if all pass, count them all and take the slot."""

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        """Release the slot (if any; `slot_token` is the admission's Batch.slot_token) and add each usage's cost
        unconditionally (its limit is ignored)."""

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        """Add `cost` to the window's counter unless that would pass `limit` (then allowed=False, nothing added)."""

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        """Add `cost` unconditionally (usage learned after the call)."""

    async def close(self) -> None:
        """Give back what this process holds of shared limits; nothing is admitted here afterwards."""

    def forget(self, slot_token: str) -> None:
        """A call holding `slot_token` was finished elsewhere (during an outage): stop keeping its hold alive."""


_PRUNE_ABOVE = 100_000


def window_end(now: float, window_seconds: int) -> float:
    """When the fixed window holding `now` ends (windows are aligned to the clock)."""
    return (now // window_seconds + 1) * window_seconds


class LocalLimiter:
    """Counters in this process's memory: exact for one process, per process when there are several."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[str, tuple[float, int]] = {}  # key -> (end of its window, used)
        self._slots: dict[str, int] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        """How many counters it holds (windows not yet pruned)."""
        return len(self._counters)

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        now = self._clock()
        states = [(c, *self._current(c.key, now, c.window_seconds)) for c in checks]
        slot_free = slot is None or self._slots.get(slot.key, 0) < slot.limit
        fits = [used + c.cost <= c.limit for c, _, used in states]
        if not (slot_free and all(fits)):
            windows = (Window(ok, c.limit, used, end - now) for ok, (c, end, used) in zip(fits, states, strict=True))
            return Batch(tuple(windows), slot_free)
        for c, end, used in states:
            self._counters[c.key] = (end, used + c.cost)
        if slot is not None:
            self._slots[slot.key] = self._slots.get(slot.key, 0) + 1
        self._prune(now)
        return Batch(tuple(Window(True, c.limit, used + c.cost, end - now) for c, end, used in states))

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        self.finish_now(slot_key, usage)

    def finish_now(self, slot_key: str | None, usage: Sequence[Check]) -> None:
        """finish() without a coroutine: this limiter does no I/O."""
        if slot_key is not None:
            self._release(slot_key)
        for u in usage:
            self._add(u.key, u.window_seconds, u.cost)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        now = self._clock()
        end, used = self._current(key, now, window_seconds)
        if used + cost > limit:
            return Window(False, limit, used, end - now)
        if cost:  # a check that costs nothing (the auth guard's, for every address) stores nothing
            self._counters[key] = (end, used + cost)
            self._prune(now)
        return Window(True, limit, used + cost, end - now)

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        self._add(key, window_seconds, cost)

    async def close(self) -> None:
        """Nothing to give back: the counters live and end with this process."""

    def forget(self, slot_token: str) -> None:
        """Nothing kept alive here."""

    def _add(self, key: str, window_seconds: int, cost: int) -> None:
        end, used = self._current(key, self._clock(), window_seconds)
        self._counters[key] = (end, used + cost)

    def _release(self, key: str) -> None:
        taken = self._slots.get(key, 0) - 1
        if taken > 0:
            self._slots[key] = taken
        else:
            self._slots.pop(key, None)

    def _prune(self, now: float) -> None:
        """Past 100,000 counters, drop the ended windows; at most once a second, as the live ones may be that many
        (one per address, say) and a scan per call would cost every call that much."""
        if len(self._counters) > _PRUNE_ABOVE and now >= self._next_prune:
            self._next_prune = now + 1.0
            self._counters = {k: v for k, v in self._counters.items() if v[0] > now}

    def _current(self, key: str, now: float, window_seconds: int) -> tuple[float, int]:
        end = window_end(now, window_seconds)
        stored = self._counters.get(key)
        return end, stored[1] if stored is not None and stored[0] == end else 0
