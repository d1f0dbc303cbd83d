"""The failed-authentication guard: callers with good keys cost no limiter call per request, yet every guess is
counted against the shared limit and an address over it is refused, on any replica."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from aipower.api.auth import AuthGuard
from aipower.errors import RateLimited
from aipower.gateway.limits import LocalLimiter, Window


class CountingLimiter(LocalLimiter):
    """The in-process limiter, counting its reads (what would be Redis round trips)."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 1_000_000.0)
        self.reads = 0

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        self.reads += 1
        return await super().hit(key, limit, window_seconds, cost)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def guards(limiter: CountingLimiter, clock: Clock, count: int = 1) -> Sequence[AuthGuard]:
    return [AuthGuard(limiter, 3, "", recheck_seconds=1.0, clock=clock) for _ in range(count)]


async def test_good_callers_are_rechecked_once_a_second_not_per_request() -> None:
    limiter, clock = CountingLimiter(), Clock()
    (guard,) = guards(limiter, clock)
    for _ in range(50):
        await guard.check("10.0.0.1")
    assert limiter.reads == 1
    clock.now += 1.01
    await guard.check("10.0.0.1")
    await guard.check("10.0.0.2")
    assert limiter.reads == 3


async def test_every_guess_is_checked_against_the_shared_count() -> None:
    limiter, clock = CountingLimiter(), Clock()
    first, second = guards(limiter, clock, 2)  # two replicas sharing one limiter
    await second.check("10.0.0.9")  # the address is known clean on the second replica
    for _ in range(3):
        await first.check("10.0.0.9")
        await first.failed("10.0.0.9")
    with pytest.raises(RateLimited) as refused:
        await first.check("10.0.0.9")  # within the recheck second: a failure made it ask again
    assert refused.value.code == "too_many_failed_authentications"
    clock.now += 1.01  # the second replica trusted it for at most a second
    with pytest.raises(RateLimited):
        await second.check("10.0.0.9")
