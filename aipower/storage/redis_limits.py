"""RateLimiter on Redis: one counter per window, updated by atomic Lua scripts, shared by every replica.

Admitting a call is one script (every window and the concurrency slot, all or nothing), finishing it another.
The script touches several keys, so it needs one Redis server (not a cluster, unless the keys share a hash slot).

If Redis cannot be reached, `FallbackLimiter` applies the configured policy: "open" keeps serving with this
process's own counters (logged once per outage), "closed" answers 503 until Redis is back. Redis is tried
again at most once a second, so an outage costs no per-request timeouts.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from aipower.errors import GatewayError, UpstreamUnavailable
from aipower.gateway.limits import Batch, Check, LocalLimiter, RateLimiter, Slot, Window
from aipower.storage.redis_outage import OutageWords, RedisOutage
from aipower.storage.redis_pipeline import ScriptPipeline

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
# Numbers travel as one space-separated argument (ARGV[1]), split here: redis-py encodes every argument of a command
# in Python, and an admission has about twenty.
_NUMBERS = """
local a = {}
for v in string.gmatch(ARGV[1], '[^ ]+') do a[#a + 1] = tonumber(v) end
"""
# KEYS: one counter per check, then the slot (if a[3] = 1). Numbers: now (seconds, float), number of checks,
# has slot, slot limit, slot ttl, then limit, window seconds, cost per check; ARGV[2]: this call's slot token. All or
# nothing: every window and the slot are checked before anything is counted. Returns {admitted, slot free, then
# allowed, used, ms to reset per check}.
# A slot is a sorted set of the calls holding it, each scored with its own deadline (now + slot ttl): a call whose
# release is lost (a reply lost to a timeout, a process gone) frees its place at its deadline, however busy the key.
_ADMIT = (
    _NUMBERS
    + """
local now = a[1]
local n = a[2]
local has_slot = a[3] == 1
local slot_free = 1
if has_slot then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now)
  if redis.call('ZCARD', KEYS[n + 1]) >= a[4] then slot_free = 0 end
end
local out = {1, slot_free}
local admitted = slot_free
for i = 1, n do
  local limit, window, cost = a[3 + 3 * i], a[4 + 3 * i], a[5 + 3 * i]
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local allowed = 1
  if used + cost > limit then allowed = 0; admitted = 0 end
  out[3 * i], out[3 * i + 1] = allowed, used
  out[3 * i + 2] = math.floor(((math.floor(now / window) + 1) * window - now) * 1000)
end
out[1] = admitted
if admitted == 0 then return out end
for i = 1, n do
  local cost = a[5 + 3 * i]
  local used = redis.call('INCRBY', KEYS[i], cost)
  if used == cost then redis.call('PEXPIRE', KEYS[i], out[3 * i + 2] + 1000) end
  out[3 * i + 1] = used
end
if has_slot then
  redis.call('ZADD', KEYS[n + 1], now + a[5], ARGV[2])
  redis.call('EXPIRE', KEYS[n + 1], a[5])
end
return out
"""
)
# KEYS: the slot (if a[1] = 1), then one counter per usage. Numbers: has slot, now, then window, cost per usage;
# ARGV[2]: the call's slot token. Releasing a token twice, or one never admitted, changes nothing.
_FINISH = (
    _NUMBERS
    + """
local first = 1
if a[1] == 1 then
  redis.call('ZREM', KEYS[1], ARGV[2])
  first = 2
end
local now = a[2]
for i = first, #KEYS do
  local j = 2 * (i - first) + 3
  local window, cost = a[j], a[j + 1]
  local used = redis.call('INCRBY', KEYS[i], cost)
  if used == cost then
    redis.call('PEXPIRE', KEYS[i], math.floor(((math.floor(now / window) + 1) * window - now) * 1000) + 1000)
  end
end
return 1
"""
)
_SLOT_TTL = 900  # a crashed process's slots free themselves after the longest call


class RedisLimiter:
    def __init__(self, redis: Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._prefix = prefix
        self._clock = clock
        self._pipeline = ScriptPipeline(redis)  # calls made together share one round trip
        self._hit = self._pipeline.script(_HIT)
        self._admit = self._pipeline.script(_ADMIT)
        self._finish = self._pipeline.script(_FINISH)
        self._token_prefix = secrets.token_hex(6)  # slot tokens: unique across processes, a counter within one
        self._tokens = itertools.count()

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        now = self._clock()
        keys = [self._counter(c.key, c.window_seconds, now) for c in checks]
        args: list[float | int] = [now, len(checks), 0, 0, _SLOT_TTL]
        token = ""
        if slot is not None:
            keys.append(self._slot(slot.key))
            args[2:4] = [1, slot.limit]
            token = f"{self._token_prefix}{next(self._tokens):x}"
        for c in checks:
            args += [c.limit, c.window_seconds, c.cost]
        try:
            reply = await self._pipeline.call(self._admit, keys, [*_numbers(args), token])
        except BaseException:
            # Cancelled, or no answer (a timeout): the script may have run and taken the slot. Give it back; a token
            # never admitted is released as a no-op. (A release that arrives first frees the place at its deadline.)
            if slot is not None:
                self._pipeline.send(self._finish, [keys[-1]], [*_numbers([1, now]), token])
            raise
        out = [int(v) for v in reply]
        windows = (
            Window(bool(out[3 * i + 2]), c.limit, out[3 * i + 3], out[3 * i + 4] / 1000) for i, c in enumerate(checks)
        )
        return Batch(tuple(windows), bool(out[1]), token if out[0] == 1 else "")

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        now = self._clock()
        keys = [] if slot_key is None else [self._slot(slot_key)]
        keys += [self._counter(u.key, u.window_seconds, now) for u in usage]
        args: list[float | int] = [0 if slot_key is None else 1, now]
        for u in usage:
            args += [u.window_seconds, u.cost]
        await self._pipeline.call(self._finish, keys, [*_numbers(args), slot_token])

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        now = self._clock()
        counter = self._counter(key, window_seconds, now)
        allowed, used, reset_ms = await self._pipeline.call(self._hit, [counter], [limit, window_seconds, cost, now])
        return Window(bool(allowed), limit, int(used), int(reset_ms) / 1000)

    async def close(self) -> None:
        await self._pipeline.close()

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        await self.finish(None, [Check(key, 0, window_seconds, cost)])

    def _counter(self, key: str, window_seconds: int, now: float) -> str:
        return f"{self._prefix}rl:{key}:{window_seconds}:{int(now // window_seconds)}"

    def _slot(self, key: str) -> str:
        # "slots:", not the "slot:" counters of earlier versions (a string there would fail the sorted-set commands;
        # left alone, those expire within their 15 minutes)
        return f"{self._prefix}slots:{key}"


class FallbackLimiter:
    """Redis while it answers; during an outage, the failure policy ("open" or "closed")."""

    def __init__(self, primary: RateLimiter, policy: str, clock: Callable[[], float] = time.monotonic) -> None:
        words = OutageWords("rate limits", "using this process's own counters", "limits are shared again")
        refuse = _limits_unavailable if policy == "closed" else None
        self._local = LocalLimiter()
        self._outage: RedisOutage[RateLimiter] = RedisOutage(primary, self._local, words, refuse, clock)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        return await self._outage.run(lambda lim: lim.hit(key, limit, window_seconds, cost))

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        await self._outage.run(lambda lim: lim.add(key, window_seconds, cost))

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        return await self._outage.run(lambda lim: lim.admit(checks, slot))

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        """A slot goes back where it was taken, whichever is up now: on Redis (its token) or in this process (during
        an outage, no token). One taken on Redis and finished during an outage frees itself at its deadline."""
        if slot_key is not None and not slot_token:
            self._local.finish_now(slot_key, [])
            slot_key = None

        def release(limiter: RateLimiter) -> Awaitable[None]:
            on_redis = slot_key if limiter is not self._local else None
            return limiter.finish(on_redis, usage, slot_token)

        if slot_key is not None or usage:
            await self._outage.run(release)


def _numbers(values: Sequence[float | int]) -> list[str]:
    """A script's numbers as its one argument (see _NUMBERS); repr keeps every digit of a float."""
    return [" ".join(map(repr, values))]


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
