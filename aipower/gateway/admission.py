"""Admission of one call: the demo key's rules, concurrency, requests and tokens per minute. Domain layer.

Checked after routing and before any money is held, so a refused call costs nothing. Limits apply per key and
per user (the tighter wins); 0 means unlimited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aipower.catalog import ModelSpec
from aipower.errors import PermissionDenied, RateLimited
from aipower.gateway.limits import RateLimiter, Window
from aipower.gateway.protocols import Caller, Limits

DAY = 86_400  # epoch days are UTC days


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    window_seconds: int = 60
    rpm: int = 600
    tpm: int = 1_000_000
    max_concurrent: int = 64
    demo_models: frozenset[str] = frozenset()
    demo_daily_calls: int = 5


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted call: what to release and record when it ends, and the windows for the response headers."""

    caller: Caller
    requests: Window | None
    tokens: Window | None


class Admission:
    def __init__(self, limiter: RateLimiter, policy: LimitPolicy) -> None:
        self._limiter = limiter
        self._policy = policy

    @property
    def demo_models(self) -> frozenset[str]:
        """The only models the public demo key may use (routing plans the demo key's smart routes among them)."""
        return self._policy.demo_models

    async def admit(self, caller: Caller, models: Sequence[ModelSpec], tokens: int) -> Ticket:
        if caller.is_demo:
            await self._demo(caller, models)
        slots = self._policy.max_concurrent
        if slots and not await self._limiter.acquire(f"conc:{caller.key_id}", slots):
            raise _limited(
                f"Too many requests in flight on this key (at most {self._policy.max_concurrent} at once). "
                "Wait for one to finish.",
                "too_many_concurrent_requests",
                1.0,
            )
        try:
            requests = await self._check(caller, "rpm", 1, "requests")
            token_window = await self._check(caller, "tpm", tokens, "tokens")
        except RateLimited:
            if slots:
                await self._limiter.release(f"conc:{caller.key_id}")
            raise
        return Ticket(caller, requests, token_window)

    async def finish(self, ticket: Ticket, output_tokens: int) -> None:
        """Release the concurrency slot and count the completion tokens the call really produced."""
        caller = ticket.caller
        if self._policy.max_concurrent:
            await self._limiter.release(f"conc:{caller.key_id}")
        if output_tokens > 0:
            for scope, limit in _scopes(caller, "tpm", self._policy):
                if limit:
                    await self._limiter.add(f"tpm:{scope}", self._policy.window_seconds, output_tokens)

    async def _check(self, caller: Caller, kind: str, cost: int, noun: str) -> Window | None:
        tightest: Window | None = None
        for scope, limit in _scopes(caller, kind, self._policy):
            if not limit:
                continue
            window = await self._limiter.hit(f"{kind}:{scope}", limit, self._policy.window_seconds, cost)
            if not window.allowed:
                raise _limited(
                    f"Rate limit reached: {limit} {noun} per {self._policy.window_seconds}s for this "
                    f"{'key' if scope.startswith('k') else 'account'} ({window.used} used). "
                    f"Retry in {math.ceil(window.reset_seconds)}s.",
                    "rate_limit_exceeded",
                    window.reset_seconds,
                    headers=rate_headers(window if kind == "rpm" else None, window if kind == "tpm" else None),
                )
            if tightest is None or window.remaining < tightest.remaining:
                tightest = window
        return tightest

    async def _demo(self, caller: Caller, models: Sequence[ModelSpec]) -> None:
        refused = [m.id for m in models if m.id not in self._policy.demo_models]
        if refused:
            raise PermissionDenied(
                f"The public demo key only works on {', '.join(sorted(self._policy.demo_models))}. "
                "Sign up for your own key (free trial calls included) to use the other models.",
                code="model_not_allowed_on_demo_key",
                param="model",
            )
        window = await self._limiter.hit(f"demo:{caller.client_ip}", self._policy.demo_daily_calls, DAY)
        if not window.allowed:
            raise _limited(
                f"The public demo key allows {self._policy.demo_daily_calls} calls per IP address per day (UTC). "
                "Sign up for your own key to keep going, or come back tomorrow.",
                "demo_quota_exceeded",
                window.reset_seconds,
            )


def _scopes(caller: Caller, kind: str, policy: LimitPolicy) -> list[tuple[str, int]]:
    limits = caller.limits or Limits()
    default = policy.rpm if kind == "rpm" else policy.tpm
    key_limit = limits.key_rpm if kind == "rpm" else limits.key_tpm
    user_limit = limits.user_rpm if kind == "rpm" else limits.user_tpm
    return [
        (f"k:{caller.key_id}", default if key_limit is None else key_limit),
        (f"u:{caller.user_id}", default if user_limit is None else user_limit),
    ]


def _limited(message: str, code: str, reset: float, headers: Mapping[str, str] | None = None) -> RateLimited:
    error = RateLimited(message, code=code, retry_after=max(1, math.ceil(reset)))
    error.headers = {"retry-after-ms": str(max(1, math.ceil(reset * 1000))), **(headers or {})}
    return error


def rate_headers(requests: Window | None, tokens: Window | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, so the SDKs' back-off and dashboards read them as they do OpenAI's."""
    headers: dict[str, str] = {}
    for noun, window in (("requests", requests), ("tokens", tokens)):
        if window is not None:
            headers[f"x-ratelimit-limit-{noun}"] = str(window.limit)
            headers[f"x-ratelimit-remaining-{noun}"] = str(window.remaining)
            headers[f"x-ratelimit-reset-{noun}"] = f"{math.ceil(window.reset_seconds)}s"
    return headers
