"""Running an operation on a Redis-backed store while Redis answers, and on a local one while it does not.

One place for the outage rule shared by the rate limiter and the breaker store: an error from Redis starts an
outage (logged once), during which Redis is tried again at most once a second, by one call at a time (the others
meanwhile go on as during the outage), so an outage costs no per-request timeouts; the first success ends it
(logged). `refuse` (fail closed) raises instead of falling back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from redis.exceptions import RedisError

from aipower.errors import GatewayError

logger = logging.getLogger(__name__)
S = TypeVar("S")
T = TypeVar("T")
RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class OutageWords:
    """How an outage is logged: what is shared, and what happens meanwhile."""

    subject: str  # "rate limits"
    meanwhile: str  # "using this process's own counters"
    back: str  # "limits are shared again"


class RedisOutage(Generic[S]):
    def __init__(
        self,
        primary: S,
        local: S,
        words: OutageWords,
        refuse: Callable[[], GatewayError] | None = None,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[S], Awaitable[object]] | None = None,
    ) -> None:
        """`probe`: a round trip to Redis that ends an outage, when an operation may succeed without one (a rate
        limit admitted from a lease)."""
        self._primary = primary
        self._local = local
        self._words = words
        self._refuse = refuse
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._probing = False  # during an outage, one call is trying Redis again
        self._probe = probe

    async def run(self, operation: Callable[[S], Awaitable[T]]) -> T:
        if self._clock() >= self._down_until and not self._probing:
            probe = self._down
            self._probing = probe
            try:
                if probe and self._probe is not None:
                    await self._probe(self._primary)
                result = await operation(self._primary)
            except (RedisError, OSError) as exc:
                self._start(exc)
            else:
                if self._down:
                    self._down = False
                    logger.warning("%s: Redis is back; %s", self._words.subject, self._words.back)
                return result
            finally:
                if probe:
                    self._probing = False
        if self._refuse is not None:
            raise self._refuse()
        return await operation(self._local)

    def _start(self, exc: Exception) -> None:
        self._down_until = self._clock() + RETRY_SECONDS
        if not self._down:
            self._down = True
            meanwhile = "refusing calls (503)" if self._refuse is not None else self._words.meanwhile
            logger.warning(
                "%s: Redis unreachable (%s); %s until it returns", self._words.subject, type(exc).__name__, meanwhile
            )
