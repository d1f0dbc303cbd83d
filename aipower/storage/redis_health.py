"""HealthStore on Redis: circuit breakers and latency averages shared by every worker and replica. Storage layer.

One hash per deployment (`<prefix>health:<deployment>`) holds what `gateway.health.Breaker` holds. Recording an
attempt ("count it, maybe open the breaker"), claiming the half-open probe and adding a speed sample are each one
Lua script, so concurrent replicas never lose an update or let two probes through. Times are Redis's own clock
(`TIME`), so replicas on different hosts agree on when a cool-down ends; tests inject a clock instead. A hash
expires after a day without attempts (never before a cool-down could end): stale state does not linger.

`FallbackHealthStore` keeps serving from this process's own breakers while Redis is unreachable (logged once
per outage) and tries Redis again at most once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from redis.asyncio import Redis

from aipower.gateway.health import Breaker, BreakerRules, MemoryHealthStore, health
from aipower.gateway.protocols import CallOutcome, DeploymentHealth, HealthStore
from aipower.storage.redis_outage import OutageWords, RedisOutage

_DAY = 86_400

# Shared by the scripts: ARGV[1] is the injected time ('' = Redis's clock); numbers are stored with full precision.
_PRELUDE = """
local function now()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
local function average(field, old, sample, alpha)
  if sample == '' then return end
  local s = tonumber(sample)
  if old then s = tonumber(old) + alpha * (s - tonumber(old)) end
  redis.call('HSET', KEYS[1], field, num(s))
end
"""
# ARGV: now, ok (1/0), ttft_ms or '', tokens_per_s or '', failures that open, alpha, ttl. gateway.health.record().
_RECORD = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'consecutive_failures', 'opened_at', 'calls', 'failures', 'error_rate',
  'ttft_ms', 'tokens_per_s')
local alpha = tonumber(ARGV[6])
local failed = 1
if ARGV[2] == '1' then failed = 0 end
local rate = tonumber(f[5] or '0')
redis.call('HSET', KEYS[1], 'calls', tonumber(f[3] or '0') + 1, 'failures', tonumber(f[4] or '0') + failed,
  'error_rate', num(rate + alpha * (failed - rate)))
average('ttft_ms', f[6], ARGV[3], alpha)
average('tokens_per_s', f[7], ARGV[4], alpha)
if failed == 0 then
  redis.call('HSET', KEYS[1], 'consecutive_failures', 0)
  redis.call('HDEL', KEYS[1], 'opened_at', 'probe_at')
else
  local consecutive = tonumber(f[1] or '0') + 1
  redis.call('HSET', KEYS[1], 'consecutive_failures', consecutive)
  if f[2] or consecutive >= tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[1], 'opened_at', num(now()))
    redis.call('HDEL', KEYS[1], 'probe_at')
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""
)
# ARGV: now, cooldown, ttl. Returns 1 when a call may go (claiming the half-open probe). gateway.health.admit().
_ADMIT = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'opened_at', 'probe_at')
if not f[1] then return 1 end
local t = now()
local cooldown = tonumber(ARGV[2])
if t - tonumber(f[1]) < cooldown then return 0 end
if f[2] and t - tonumber(f[2]) < cooldown then return 0 end
redis.call('HSET', KEYS[1], 'probe_at', num(t))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
# ARGV: now (unused), tokens_per_s, alpha, ttl. gateway.health.record_speed().
_SPEED = (
    _PRELUDE
    + """
average('tokens_per_s', redis.call('HGET', KEYS[1], 'tokens_per_s'), ARGV[2], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)


class RedisHealthStore:
    """HealthStore on Redis; `clock` (seconds) replaces Redis's TIME, for tests."""

    def __init__(
        self, redis: Redis, prefix: str, rules: BreakerRules, clock: Callable[[], float] | None = None
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.rules = rules
        self._clock = clock
        self._ttl = int(max(_DAY, 4 * rules.cooldown))
        self._record = redis.register_script(_RECORD)
        self._admit = redis.register_script(_ADMIT)
        self._speed = redis.register_script(_SPEED)

    def _key(self, deployment: str) -> str:
        return f"{self._prefix}health:{deployment}"

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]:
        names = list(deployments)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                pipe.hgetall(self._key(name))
            results = await pipe.execute()
        seconds, micros = results[0]
        hashes = results[1:]
        now = self._clock() if self._clock is not None else int(seconds) + int(micros) / 1e6
        return {name: health(name, _breaker(h), now, self.rules) for name, h in zip(names, hashes, strict=True)}

    async def admit(self, deployment: str) -> bool:
        args: list[str | int] = [self._now(), repr(self.rules.cooldown), self._ttl]
        return bool(await self._admit(keys=[self._key(deployment)], args=args))

    async def record(self, outcome: CallOutcome) -> None:
        ttft_ms = "" if outcome.ttft is None else repr(outcome.ttft * 1000)
        speed = "" if outcome.tokens_per_s is None else repr(outcome.tokens_per_s)
        rules = self.rules
        args: list[str | int] = [
            self._now(),
            int(outcome.ok),
            ttft_ms,
            speed,
            rules.failures,
            repr(rules.alpha),
            self._ttl,
        ]
        await self._record(keys=[self._key(outcome.deployment)], args=args)

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        args: list[str | int] = ["", repr(tokens_per_s), repr(self.rules.alpha), self._ttl]
        await self._speed(keys=[self._key(deployment)], args=args)


def _breaker(fields: object) -> Breaker:
    assert isinstance(fields, dict)
    values = {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in fields.items()}
    opened, probe = values.get("opened_at"), values.get("probe_at")
    return Breaker(
        consecutive_failures=int(values.get("consecutive_failures", 0)),
        opened_at=opened,
        probe_at=probe,
        calls=int(values.get("calls", 0)),
        failures=int(values.get("failures", 0)),
        error_rate=values.get("error_rate", 0.0),
        ttft_ms=values.get("ttft_ms"),
        tokens_per_s=values.get("tokens_per_s"),
    )


class FallbackHealthStore:
    """Redis while it answers; during an outage, this process's own breakers (Redis is retried once a second)."""

    def __init__(
        self, primary: HealthStore, local: MemoryHealthStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        words = OutageWords("circuit breakers", "using this process's own breakers", "breaker state is shared again")
        self._outage: RedisOutage[HealthStore] = RedisOutage(primary, local, words, None, clock)

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]:
        return await self._outage.run(lambda store: store.read(deployments))

    async def admit(self, deployment: str) -> bool:
        return await self._outage.run(lambda store: store.admit(deployment))

    async def record(self, outcome: CallOutcome) -> None:
        await self._outage.run(lambda store: store.record(outcome))

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        await self._outage.run(lambda store: store.record_speed(deployment, tokens_per_s))
