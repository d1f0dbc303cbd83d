"""RateLimiter on Redis: one counter per window, updated by atomic Lua scripts, shared by every replica.

Admitting a call is one script (every window and the concurrency slot, all or nothing), finishing it another.
The script touches several keys, so it needs one Redis server (not a cluster, unless the keys share a hash slot).

If Redis cannot be reached, `FallbackLimiter` applies the configured policy: "open" keeps serving with this
process's own counters (logged once per outage), "closed" answers 503 until Redis is back. Redis is tried
again at most once a second, so an outage costs no per-request timeouts.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from aipower.errors import GatewayError, UpstreamUnavailable
from aipower.gateway.limit_leases import Lease
from aipower.gateway.limits import Batch, Check, LocalLimiter, RateLimiter, Slot, Window
from aipower.storage import redis_limits_lua as lua
from aipower.storage.redis_outage import OutageWords, RedisOutage
from aipower.storage.redis_pipeline import ScriptPipeline

logger = logging.getLogger(__name__)

_SLOT_TTL = 900  # a crashed process's slots free themselves after the longest call


class RedisLimiter:
    def __init__(self, redis: Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._prefix = prefix
        self._clock = clock
        self._pipeline = ScriptPipeline(redis)  # calls made together share one round trip
        self._hit = self._pipeline.script(lua.HIT)
        self._admit = self._pipeline.script(lua.ADMIT)
        self._finish = self._pipeline.script(lua.FINISH)
        self._give_back = self._pipeline.script(lua.GIVE_BACK)
        self._keep = self._pipeline.script(lua.KEEP)
        self._token_prefix = secrets.token_hex(6)  # slot tokens: unique across processes, a counter within one
        self._tokens = itertools.count()

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        return (await self.lease(checks, slot, [0] * len(checks), 0, 1, self._clock())).batch

    async def lease(
        self,
        checks: Sequence[Check],
        slot: Slot | None,
        extras: Sequence[int],
        spare_slots: int,
        share: int,
        now: float,
        slot_ttl: int = _SLOT_TTL,
    ) -> Lease:
        """admit(), taking up to extras[i] more on check i and up to `spare_slots` more slot holds (see lua.ADMIT),
        each hold good for `slot_ttl` seconds unless kept."""
        keys = [self._counter(c.key, c.window_seconds, now) for c in checks]
        args: list[float | int] = [now, len(checks), 0, 0, slot_ttl, share, spare_slots]
        token = ""
        if slot is not None:
            keys.append(self._slot(slot.key))
            args[2:4] = [1, slot.limit]
            token = f"{self._token_prefix}{next(self._tokens):x}"
        for c, extra in zip(checks, extras, strict=True):
            args += [c.limit, c.window_seconds, c.cost, extra]
        try:
            reply = await self._pipeline.call(self._admit, keys, [*_numbers(args), token])
        except BaseException:
            # Cancelled, or no answer (a timeout): the script may have run and taken the slot. Give it back; a token
            # never admitted is released as a no-op. (A release that arrives first frees the place at its deadline.)
            if slot is not None:
                tokens = [token, *(f"{token}.{j}" for j in range(1, spare_slots + 1))]
                self._pipeline.send(self._give_back, [keys[-1]], [*_numbers([1, 0]), *tokens])
            raise
        out = [int(v) for v in reply]
        windows = (
            Window(bool(out[4 * i + 3]), c.limit, out[4 * i + 4], out[4 * i + 5] / 1000) for i, c in enumerate(checks)
        )
        admitted = out[0] == 1
        batch = Batch(tuple(windows), bool(out[1]), token if admitted else "")
        counted = tuple(out[4 * i + 6] for i in range(len(checks)))
        return Lease(batch, counted, tuple(f"{token}.{j}" for j in range(1, out[2] + 1)))

    async def keep(self, slot_key: str, tokens: Sequence[str], ttl: int, now: float) -> None:
        """Move each hold's deadline to now + ttl, if it is still held."""
        await self._pipeline.call(self._keep, [self._slot(slot_key)], [*_numbers([now + ttl, ttl]), *tokens])

    async def give_back(
        self,
        slot_key: str | None,
        tokens: Sequence[str],
        unused: Sequence[tuple[Check, float]],
        send_id: str = "",
    ) -> None:
        """Release slot holds (tokens); take each check.cost off the window that holds time `at` (add it if < 0). The
        counts of a `send_id` already seen are not applied again (see lua.GIVE_BACK)."""
        keys = [f"{self._prefix}gb:{send_id}"] if send_id else []
        keys += [] if slot_key is None else [self._slot(slot_key)]
        keys += [self._counter(c.key, c.window_seconds, at) for c, at in unused]
        numbers: list[float | int] = [0 if slot_key is None else 1, 1 if send_id else 0]
        for c, _ in unused:
            numbers += [c.window_seconds, c.cost]
        await self._pipeline.call(self._give_back, keys, [*_numbers(numbers), *tokens])

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

    def forget(self, slot_token: str) -> None:
        """Nothing kept alive here: a hold frees itself at its deadline."""

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
        self._primary = primary
        self._local = LocalLimiter()
        self._outage: RedisOutage[RateLimiter] = RedisOutage(primary, self._local, words, refuse, clock, _probe)

    async def hit(self, key: str, limit: int, window_seconds: int, cost: int = 1) -> Window:
        return await self._outage.run(lambda lim: lim.hit(key, limit, window_seconds, cost))

    async def add(self, key: str, window_seconds: int, cost: int) -> None:
        await self._outage.run(lambda lim: lim.add(key, window_seconds, cost))

    async def admit(self, checks: Sequence[Check], slot: Slot | None = None) -> Batch:
        return await self._outage.run(lambda lim: lim.admit(checks, slot))

    async def close(self) -> None:
        """Give back what the shared limiter holds (a lease), if Redis answers."""
        try:
            await self._primary.close()
        except Exception as exc:  # noqa: BLE001 - shutting down: the leases end with their windows
            logger.warning("limits: could not give leases back on shutdown (%s)", type(exc).__name__)

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        """A slot goes back where it was taken, whichever is up now: on Redis (its token) or in this process (during
        an outage, no token). One taken on Redis and finished during an outage frees itself at its deadline: the
        Redis side is told to stop keeping it alive."""
        if slot_key is not None and not slot_token:
            self._local.finish_now(slot_key, [])
            slot_key = None
        reached = False

        def release(limiter: RateLimiter) -> Awaitable[None]:
            nonlocal reached
            reached = reached or limiter is not self._local
            on_redis = slot_key if limiter is not self._local else None
            return limiter.finish(on_redis, usage, slot_token)

        try:
            if slot_key is not None or usage:
                await self._outage.run(release)
        finally:
            if slot_token and not reached:
                self._primary.forget(slot_token)

    def forget(self, slot_token: str) -> None:
        self._primary.forget(slot_token)


def _probe(limiter: RateLimiter) -> Awaitable[Window]:
    """A round trip to Redis that counts nothing (admissions may be answered from leases without one)."""
    return limiter.hit("outage-probe", 1, 1, cost=0)


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
