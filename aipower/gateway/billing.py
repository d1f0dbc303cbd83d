"""Billing arithmetic: the hold for a request, the charge for a call, top-up bonuses, key checks. Pure. Domain layer.

A hold is the worst case: the estimated prompt plus max_tokens (or the model's max output), at the dearest of
the models a request may be routed to. The charge is money.cost() of the upstream's reported usage at the
price of the model that answered (reasoning tokens are part of output tokens). If the real charge exceeds the
hold, the difference is taken from the balance when it is there and written off otherwise: a balance never
goes below zero.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from aipower import money
from aipower.catalog import BillingRules, ModelSpec
from aipower.errors import AuthenticationFailed, PermissionDenied
from aipower.gateway import tokens
from aipower.gateway.protocols import Caller
from aipower.messages import ChatRequest, Usage
from aipower.money import Nanos


def hold_amount(request: ChatRequest, models: Sequence[ModelSpec]) -> Nanos:
    prompt = tokens.estimate_prompt_upper(request)
    return max(
        money.cost(prompt, min(request.max_tokens or m.max_output, m.max_output) * (request.n or 1), m.price)
        for m in models
    )


def charge(usage: Usage, model: ModelSpec) -> Nanos:
    return money.cost(usage.input_tokens, usage.output_tokens, model.price)


def bonuses(rules: BillingRules, topup_usd: Decimal, first: bool) -> list[tuple[str, Nanos]]:
    """The bonus ledger entries a top-up earns (reason note, amount)."""
    earned: list[tuple[str, Nanos]] = []
    if first and topup_usd >= rules.first_topup_min_usd and rules.first_topup_credits:
        earned.append(("first top-up bonus", rules.first_topup_credits * money.NANOS_PER_CREDIT))
    reached = [t for t in rules.topup_bonus if topup_usd >= t.min_usd]
    if reached:
        tier = reached[-1]
        nanos = money.usd_to_nanos(topup_usd) * tier.percent // 100
        earned.append((f"{tier.percent}% top-up bonus (${tier.min_usd}+)", nanos))
    return earned


def check_expiry(caller: Caller, now: dt.datetime) -> None:
    """An expired key is refused on every endpoint (the API layer checks it with the key, on every request)."""
    if caller.expires_at is not None and caller.expires_at <= now:
        raise AuthenticationFailed(
            "This API key has expired. Ask the operator for a new one or a later expiry.", code="key_expired"
        )


def check_key(caller: Caller, model_ids: Sequence[str], now: dt.datetime) -> None:
    """Per-key restrictions that need no database: expiry and the allowed-model list."""
    check_expiry(caller, now)
    if caller.allowed_models is not None:
        refused = [m for m in model_ids if m not in caller.allowed_models]
        if refused:
            raise PermissionDenied(
                f"This API key may not use '{refused[0]}'. Allowed: {', '.join(sorted(caller.allowed_models))}.",
                code="model_not_allowed_for_key",
                param="model",
            )
