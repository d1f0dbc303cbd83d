"""Rate limits: the RateLimiter protocol, its in-process implementation, and the rules applied per call. Domain layer.

Windows are fixed and aligned to the clock (a minute window resets at :00), so every process and Redis agree on
them. Requests count 1 at admission; tokens count the prompt estimate plus max_tokens at admission, and the
real completion tokens are added when the call ends (a call may overshoot; the next ones wait for the reset).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        """Add `cost` to the window's counter unless that would pass `limit` (then allowed=False, nothing added)."""

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        """Add `cost` unconditionally (usage learned after the call)."""

    async def acquire(self, key: str, limit: int) -> bool:
        """Take one of `limit` concurrency slots."""

    async def release(self, key: str) -> None: ...


class LocalLimiter:
    """Counters in this process's memory: exact for one process, per process when there are several."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[str, tuple[float, int]] = {}  # key -> (end of its window, used)
        self._slots: dict[str, int] = {}

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        now = self._clock()
        end, used = self._current(key, now, window_seconds)
        if used + cost > limit:
            return Window(False, limit, used, end - now)
        self._counters[key] = (end, used + cost)
        if len(self._counters) > 100_000:
            self._counters = {k: v for k, v in self._counters.items() if v[0] > now}
        return Window(True, limit, used + cost, end - now)

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        end, used = self._current(key, self._clock(), window_seconds)
        self._counters[key] = (end, used + cost)

    async def acquire(self, key: str, limit: int) -> bool:
        taken = self._slots.get(key, 0)
        if taken >= limit:
            return False
        self._slots[key] = taken + 1
        return True

    async def release(self, key: str) -> None:
        taken = self._slots.get(key, 0) - 1
        if taken > 0:
            self._slots[key] = taken
        else:
            self._slots.pop(key, None)

    def _current(self, key: str, now: float, window_seconds: int) -> tuple[float, int]:
        end = (now // window_seconds + 1) * window_seconds
        stored = self._counters.get(key)
        return end, stored[1] if stored is not None and stored[0] == end else 0
