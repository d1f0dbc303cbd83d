"""Admission of one call: the demo key's rules, concurrency, requests and tokens per minute. Domain layer.

Checked after routing and before any money is held, so a refused call costs nothing. Limits apply per key and
per user (the tighter wins); 0 means unlimited.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aipower.catalog import ModelSpec
from aipower.errors import PermissionDenied, RateLimited
from aipower.gateway.limits import Batch, Check, LocalLimiter, RateLimiter, Slot, Window
from aipower.gateway.protocols import Caller, Limits

logger = logging.getLogger(__name__)
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
    slot_token: str = ""


class Admission:
    def __init__(self, limiter: RateLimiter, policy: LimitPolicy) -> None:
        self._limiter = limiter
        self._policy = policy
        self._local = limiter if isinstance(limiter, LocalLimiter) else None

    @property
    def demo_models(self) -> frozenset[str]:
        """The only models the public demo key may use (routing plans the demo key's smart routes among them)."""
        return self._policy.demo_models

    async def admit(self, caller: Caller, models: Sequence[ModelSpec], tokens: int) -> Ticket:
        """One limiter call checks every window and the concurrency slot; a refused call counts nowhere."""
        if caller.is_demo:
            self._demo_models(models)
        labels, checks = self._checks(caller, tokens)
        slots = self._policy.max_concurrent
        batch = await self._limiter.admit(checks, Slot(f"conc:{caller.key_id}", slots) if slots else None)
        if not batch.admitted:
            raise self._refusal(labels, batch)
        windows = list(zip(labels, batch.windows, strict=True))
        return Ticket(caller, _tightest(windows, "rpm"), _tightest(windows, "tpm"), batch.slot_token)

    async def finish(self, ticket: Ticket, output_tokens: int) -> None:
        """Release the concurrency slot and count the completion tokens the call really produced. Never raises: the
        call is over (and settled); a limiter that cannot be reached now (Redis down, with limits "closed") must not
        turn its answer into an error. Its slot then frees itself when the slot's time-to-live runs out."""
        slot_key, usage = self._finishing(ticket, output_tokens)
        if slot_key is None and not usage:
            return
        try:
            await self._limiter.finish(slot_key, usage, ticket.slot_token)
        except Exception:  # see the docstring
            logger.warning("limits: could not release a finished call's slot and tokens", exc_info=True)

    @property
    def finishes_now(self) -> bool:
        """The limits live in this process: finish_now() can do finish()'s work without I/O."""
        return self._local is not None

    def finish_now(self, ticket: Ticket, output_tokens: int) -> None:
        """finish(), right here (only where finishes_now)."""
        assert self._local is not None
        self._local.finish_now(*self._finishing(ticket, output_tokens))

    def _finishing(self, ticket: Ticket, output_tokens: int) -> tuple[str | None, list[Check]]:
        """The slot to release and the completion tokens to count."""
        caller = ticket.caller
        slot_key = f"conc:{caller.key_id}" if self._policy.max_concurrent else None
        window = self._policy.window_seconds
        usage = [
            Check(f"tpm:{scope}", limit, window, output_tokens)
            for scope, limit in _scopes(caller, "tpm", self._policy)
            if limit and output_tokens > 0
        ]
        return slot_key, usage

    def _checks(self, caller: Caller, tokens: int) -> tuple[list[tuple[str, str]], list[Check]]:
        """The windows to count, in the order their refusals are reported, each with its (kind, scope)."""
        labels: list[tuple[str, str]] = []
        checks: list[Check] = []
        if caller.is_demo:
            labels.append(("demo", f"{caller.client_ip}"))
            checks.append(Check(f"demo:{caller.client_ip}", self._policy.demo_daily_calls, DAY))
        for kind, cost in (("rpm", 1), ("tpm", tokens)):
            for scope, limit in _scopes(caller, kind, self._policy):
                if limit:
                    labels.append((kind, scope))
                    checks.append(Check(f"{kind}:{scope}", limit, self._policy.window_seconds, cost))
        return labels, checks

    def _refusal(self, labels: Sequence[tuple[str, str]], batch: Batch) -> RateLimited:
        """The error for a refused batch: the demo quota first, then concurrency, then the first window refused."""
        refused = [(kind, scope, w) for (kind, scope), w in zip(labels, batch.windows, strict=True) if not w.allowed]
        if refused and refused[0][0] == "demo":
            return _limited(
                f"The public demo key allows {self._policy.demo_daily_calls} calls per IP address per day (UTC). "
                "Sign up for your own key to keep going, or come back tomorrow.",
                "demo_quota_exceeded",
                refused[0][2].reset_seconds,
            )
        if not batch.slot_free:
            return _limited(
                f"Too many requests in flight on this key (at most {self._policy.max_concurrent} at once). "
                "Wait for one to finish.",
                "too_many_concurrent_requests",
                1.0,
            )
        kind, scope, window = refused[0]
        noun = "requests" if kind == "rpm" else "tokens"
        return _limited(
            f"Rate limit reached: {window.limit} {noun} per {self._policy.window_seconds}s for this "
            f"{'key' if scope.startswith('k') else 'account'} ({window.used} used). "
            f"Retry in {math.ceil(window.reset_seconds)}s.",
            "rate_limit_exceeded",
            window.reset_seconds,
            headers=rate_headers(window if kind == "rpm" else None, window if kind == "tpm" else None),
        )

    def _demo_models(self, models: Sequence[ModelSpec]) -> None:
        refused = [m.id for m in models if m.id not in self._policy.demo_models]
        if refused:
            raise PermissionDenied(
                f"The public demo key only works on {', '.join(sorted(self._policy.demo_models))}. "
                "Sign up for your own key (free trial calls included) to use the other models.",
                code="model_not_allowed_on_demo_key",
                param="model",
            )


def _tightest(windows: Sequence[tuple[tuple[str, str], Window]], kind: str) -> Window | None:
    """The window of `kind` with the least remaining (the first on a tie), for the x-ratelimit-* headers."""
    tightest: Window | None = None
    for (window_kind, _), window in windows:
        if window_kind == kind and (tightest is None or window.remaining < tightest.remaining):
            tightest = window
    return tightest


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
