"""RateLimiter on Redis: one counter per window, updated by atomic Lua scripts, shared by every replica.

If Redis cannot be reached, `FallbackLimiter` applies the configured policy: "open" keeps serving with this
process's own counters (logged once per outage), "closed" answers 503 until Redis is back. Redis is tried
again at most once a second, so an outage costs no per-request timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from aipower.errors import GatewayError, UpstreamUnavailable
from aipower.gateway.limits import LocalLimiter, RateLimiter, Window
from aipower.storage.redis_outage import OutageWords, RedisOutage

# KEYS[1] counter; ARGV: limit, window seconds, cost, now (seconds, float). Returns {allowed, used, ms to reset}.
_HIT = """
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local reset_ms = math.floor(((math.floor(now / window) + 1) * window - now) * 1000)
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[3])
if used + cost > tonumber(ARGV[1]) then return {0, used, reset_ms} end
used = redis.call('INCRBY', KEYS[1], cost)
if used == cost then redis.call('PEXPIRE', KEYS[1], reset_ms + 1000) end
return {1, used, reset_ms}
"""
# KEYS[1] slot counter; ARGV: limit, ttl seconds. Returns 1 if a slot was taken.
_ACQUIRE = """
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
local taken = tonumber(redis.call('GET', KEYS[1]) or '0')
if taken > 0 then redis.call('DECR', KEYS[1]) end
return 1
"""
_SLOT_TTL = 900  # a crashed process's slots free themselves after the longest call


class RedisLimiter:
    def __init__(self, redis: Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._hit = redis.register_script(_HIT)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        index = int(self._clock() // window_seconds)
        counter = f"{self._prefix}rl:{key}:{window_seconds}:{index}"
        allowed, used, reset_ms = await self._hit(keys=[counter], args=[limit, window_seconds, cost, self._clock()])
        return Window(bool(allowed), limit, int(used), int(reset_ms) / 1000)

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        await self.hit(key, 2**62, window_seconds, cost)

    async def acquire(self, key: str, limit: int) -> bool:
        return bool(await self._acquire(keys=[f"{self._prefix}slot:{key}"], args=[limit, _SLOT_TTL]))

    async def release(self, key: str) -> None:
        await self._release(keys=[f"{self._prefix}slot:{key}"], args=[])


class FallbackLimiter:
    """Redis while it answers; during an outage, the failure policy ("open" or "closed")."""

    def __init__(self, primary: RateLimiter, policy: str, clock: Callable[[], float] = time.monotonic) -> None:
        words = OutageWords("rate limits", "using this process's own counters", "limits are shared again")
        refuse = _limits_unavailable if policy == "closed" else None
        self._outage: RedisOutage[RateLimiter] = RedisOutage(primary, LocalLimiter(), words, refuse, clock)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        return await self._outage.run(lambda lim: lim.hit(key, limit, window_seconds, cost))

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        await self._outage.run(lambda lim: lim.add(key, window_seconds, cost))

    async def acquire(self, key: str, limit: int) -> bool:
        return await self._outage.run(lambda lim: lim.acquire(key, limit))

    async def release(self, key: str) -> None:
        await self._outage.run(lambda lim: lim.release(key))


def _limits_unavailable() -> GatewayError:
    return UpstreamUnavailable(
        "The gateway's rate-limit store is unavailable; try again shortly.", code="limits_unavailable"
    )


def connect(url: str) -> Redis:
    options: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "health_check_interval": 0}
    return Redis.from_url(url, **options)


def describe(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
