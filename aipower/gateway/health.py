"""Circuit breakers and latency averages per deployment, and the in-memory HealthStore. Domain layer.

A breaker opens after `failures` consecutive retryable failures; while open its deployment is skipped. After
`cooldown` seconds it is half-open: one probe call is let through (others still skip it); the probe's success
closes it, its failure opens it for another cool-down. The functions here are pure; the store adds a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from aipower.gateway.protocols import BreakerState, CallOutcome, DeploymentHealth


@dataclass(frozen=True, slots=True)
class BreakerRules:
    failures: int = 5  # consecutive retryable failures that open a breaker
    cooldown: float = 30.0  # seconds a breaker stays open before one probe is let through
    alpha: float = 0.2  # weight of the newest sample in the moving averages


@dataclass(frozen=True, slots=True)
class Breaker:
    """What is stored per deployment (times are the store's clock, in seconds)."""

    consecutive_failures: int = 0
    opened_at: float | None = None
    probe_at: float | None = None  # when the half-open probe was let through
    calls: int = 0
    failures: int = 0
    error_rate: float = 0.0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None


def state(breaker: Breaker, now: float, rules: BreakerRules) -> BreakerState:
    if breaker.opened_at is None:
        return "closed"
    return "open" if now - breaker.opened_at < rules.cooldown else "half-open"


def admit(breaker: Breaker, now: float, rules: BreakerRules) -> tuple[bool, Breaker]:
    """Whether a call may go now, and the breaker after letting it (the half-open probe is claimed)."""
    current = state(breaker, now, rules)
    if current == "closed":
        return True, breaker
    if current == "open" or (breaker.probe_at is not None and now - breaker.probe_at < rules.cooldown):
        return False, breaker
    return True, replace(breaker, probe_at=now)


def record(breaker: Breaker, outcome: CallOutcome, now: float, rules: BreakerRules) -> Breaker:
    """The breaker after one attempt: success closes it; a failure counts, and opens it at the threshold."""
    failed = 0.0 if outcome.ok else 1.0
    consecutive, opened_at, probe_at = 0, None, None  # success
    if not outcome.ok:
        consecutive = breaker.consecutive_failures + 1
        if breaker.opened_at is not None or consecutive >= rules.failures:
            opened_at = now
        else:
            opened_at, probe_at = breaker.opened_at, breaker.probe_at
    return Breaker(  # built once, not replaced field by field: this runs for every call
        consecutive_failures=consecutive,
        opened_at=opened_at,
        probe_at=probe_at,
        calls=breaker.calls + 1,
        failures=breaker.failures + int(failed),
        error_rate=breaker.error_rate + rules.alpha * (failed - breaker.error_rate),
        ttft_ms=_average(breaker.ttft_ms, None if outcome.ttft is None else outcome.ttft * 1000, rules.alpha),
        tokens_per_s=_average(breaker.tokens_per_s, outcome.tokens_per_s, rules.alpha),
    )


def record_speed(breaker: Breaker, tokens_per_s: float, rules: BreakerRules) -> Breaker:
    """The breaker with one more streaming-rate sample (the attempt itself was recorded when it started)."""
    return replace(breaker, tokens_per_s=_average(breaker.tokens_per_s, tokens_per_s, rules.alpha))


def health(deployment: str, breaker: Breaker, now: float, rules: BreakerRules) -> DeploymentHealth:
    current = state(breaker, now, rules)
    retry_in = None
    if current == "open" and breaker.opened_at is not None:
        retry_in = max(0.0, breaker.opened_at + rules.cooldown - now)
    return DeploymentHealth(
        deployment=deployment,
        state=current,
        consecutive_failures=breaker.consecutive_failures,
        calls=breaker.calls,
        failures=breaker.failures,
        error_rate=breaker.error_rate,
        ttft_ms=breaker.ttft_ms,
        tokens_per_s=breaker.tokens_per_s,
        retry_in=retry_in,
    )


def _average(old: float | None, sample: float | None, alpha: float) -> float | None:
    if sample is None:
        return old
    return sample if old is None else old + alpha * (sample - old)


class MemoryHealthStore:
    """HealthStore for one process. Several workers or replicas share breakers through Redis instead."""

    def __init__(self, rules: BreakerRules | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules or BreakerRules()
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]:
        now = self._clock()
        return {d: health(d, self._breakers.get(d, Breaker()), now, self.rules) for d in deployments}

    async def admit(self, deployment: str) -> bool:
        allowed, self._breakers[deployment] = admit(
            self._breakers.get(deployment, Breaker()), self._clock(), self.rules
        )
        return allowed

    async def record(self, outcome: CallOutcome) -> None:
        current = self._breakers.get(outcome.deployment, Breaker())
        self._breakers[outcome.deployment] = record(current, outcome, self._clock(), self.rules)

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        self._breakers[deployment] = record_speed(self._breakers.get(deployment, Breaker()), tokens_per_s, self.rules)
