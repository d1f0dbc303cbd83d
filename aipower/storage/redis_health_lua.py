"""The Lua scripts of the Redis HealthStore (`redis_health`), their arguments and their answers. Storage layer.

One hash per deployment holds what `gateway.health.Breaker` holds. `APPLY` is `gateway.health.record()` and
`record_speed()` for a list of samples of one deployment, applied in order (one sample when every call goes to
Redis; the samples queued since the last sync otherwise), and answers the hash as it leaves it. `ADMIT` is
`gateway.health.admit()`: it claims the half-open probe atomically, so two replicas never both probe. Numbers are
stored with full precision (`%.17g`), so the arithmetic is the in-memory store's, bit for bit. Times are Redis's
own clock (`TIME`) unless a test injects one (ARGV[1]).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aipower.gateway.health import Breaker, BreakerRules
from aipower.gateway.protocols import CallOutcome

# What ADMIT answers.
REFUSED, CLOSED, PROBE = 0, 1, 2

# A sample: an attempt (`gateway.health.record`) or a streaming rate (`gateway.health.record_speed`).
Sample = tuple[str, CallOutcome | float]

# Shared by the scripts: ARGV[1] is the injected time ('' = Redis's clock).
_PRELUDE = """
local clock
local function now()
  if not clock then
    if ARGV[1] ~= '' then
      clock = tonumber(ARGV[1])
    else
      local t = redis.call('TIME')
      clock = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
  end
  return clock
end
local function num(x) return string.format('%.17g', x) end
"""
# ARGV: now, failures that open, alpha, ttl, then one triple per sample: kind ('1' success, '0' failure, 's' a
# streaming rate), ttft_ms or '', tokens_per_s or ''. Fields are read once and written once.
APPLY = (
    _PRELUDE
    + """
local function average(old, sample, alpha)
  if sample == '' then return old end
  local s = tonumber(sample)
  if old then s = old + alpha * (s - old) end
  return s
end
local f = redis.call('HMGET', KEYS[1], 'consecutive_failures', 'opened_at', 'calls', 'failures', 'error_rate',
  'ttft_ms', 'tokens_per_s')
local limit, alpha = tonumber(ARGV[2]), tonumber(ARGV[3])
local consecutive, calls, failures = tonumber(f[1] or '0'), tonumber(f[3] or '0'), tonumber(f[4] or '0')
local rate, ttft, speed = tonumber(f[5] or '0'), tonumber(f[6]), tonumber(f[7])
local opened = f[2]
local attempts, reset, new_ttft, new_speed = false, false, false, false
for i = 5, #ARGV, 3 do
  local kind = ARGV[i]
  if kind ~= 's' then
    local failed = 1
    if kind == '1' then failed = 0 end
    attempts = true
    calls = calls + 1
    failures = failures + failed
    rate = rate + alpha * (failed - rate)
    if ARGV[i + 1] ~= '' then new_ttft = true end
    ttft = average(ttft, ARGV[i + 1], alpha)
    if failed == 0 then
      consecutive, opened, reset = 0, false, true
    else
      consecutive = consecutive + 1
      if opened or consecutive >= limit then opened, reset = num(now()), true end
    end
  end
  if ARGV[i + 2] ~= '' then new_speed = true end
  speed = average(speed, ARGV[i + 2], alpha)
end
if attempts then
  redis.call('HSET', KEYS[1], 'calls', calls, 'failures', failures, 'error_rate', num(rate),
    'consecutive_failures', consecutive)
end
if new_ttft then redis.call('HSET', KEYS[1], 'ttft_ms', num(ttft)) end
if new_speed then redis.call('HSET', KEYS[1], 'tokens_per_s', num(speed)) end
if reset then
  if opened then redis.call('HSET', KEYS[1], 'opened_at', opened) else redis.call('HDEL', KEYS[1], 'opened_at') end
  redis.call('HDEL', KEYS[1], 'probe_at')
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('HGETALL', KEYS[1])
"""
)
# ARGV: now, cooldown, ttl. Answers [CLOSED (no breaker open: go), PROBE (the half-open probe, now claimed: go) or
# REFUSED, then opened_at and probe_at as they are now ('' for none)], so a mirror learns them.
ADMIT = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'opened_at', 'probe_at')
if not f[1] then return {1, '', f[2] or ''} end
local t = now()
local cooldown = tonumber(ARGV[2])
if t - tonumber(f[1]) < cooldown then return {0, f[1], f[2] or ''} end
if f[2] and t - tonumber(f[2]) < cooldown then return {0, f[1], f[2]} end
redis.call('HSET', KEYS[1], 'probe_at', num(t))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {2, f[1], num(t)}
"""
)


def apply_args(now: str, rules: BreakerRules, ttl: int, samples: Iterable[Sample]) -> list[str | int]:
    """APPLY's ARGV for these samples (all of one deployment, oldest first)."""
    args: list[str | int] = [now, rules.failures, repr(rules.alpha), ttl]
    for _, sample in samples:
        if isinstance(sample, CallOutcome):
            ttft_ms = "" if sample.ttft is None else repr(sample.ttft * 1000)
            speed = "" if sample.tokens_per_s is None else repr(sample.tokens_per_s)
            args += ["1" if sample.ok else "0", ttft_ms, speed]
        else:
            args += ["s", "", repr(sample)]
    return args


def breaker(fields: object) -> Breaker:
    """The Breaker in a hash, as HGETALL answers it (a dict) or as a script answers it (a flat list)."""
    if isinstance(fields, list | tuple):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    assert isinstance(fields, dict)
    values = {_text(k): float(v) for k, v in fields.items()}
    return Breaker(
        consecutive_failures=int(values.get("consecutive_failures", 0)),
        opened_at=values.get("opened_at"),
        probe_at=values.get("probe_at"),
        calls=int(values.get("calls", 0)),
        failures=int(values.get("failures", 0)),
        error_rate=values.get("error_rate", 0.0),
        ttft_ms=values.get("ttft_ms"),
        tokens_per_s=values.get("tokens_per_s"),
    )


def admitted(answer: object) -> tuple[int, float | None, float | None]:
    """ADMIT's answer: CLOSED, PROBE or REFUSED, and the breaker's opened_at and probe_at."""
    assert isinstance(answer, list | tuple) and len(answer) == 3
    code, opened, probe = answer
    return int(code), (float(opened) if opened else None), (float(probe) if probe else None)


def by_deployment(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """The samples grouped per deployment, each group in its original order."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample[0], []).append(sample)
    return groups


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
