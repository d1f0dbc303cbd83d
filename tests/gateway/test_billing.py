"""Billing arithmetic: holds, charges, bonuses, key checks (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from aipower import catalog as catalog_file
from aipower.errors import AuthenticationFailed, PermissionDenied
from aipower.gateway import billing
from aipower.gateway.protocols import Caller
from aipower.messages import ChatRequest, Message, Text, Usage

CATALOG = catalog_file.load()
RULES = CATALOG.billing
CREDIT = 10_000_000


def request(text: str = "hello", max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=(Message("user", (Text(text),)),), max_tokens=max_tokens)


@pytest.mark.parametrize("model_id", list(CATALOG.models))
def test_every_model_charges_exact_nanos_for_reported_usage(model_id: str) -> None:
    model = CATALOG.models[model_id]
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    expected = (model.price.input + model.price.output) * 1_000_000_000
    assert billing.charge(usage, model) == int(expected)


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "nanos"),
    [
        (0, 0, 0),
        (1, 0, 340),  # DeepSeek V3: $0.34 / 1M -> 340 nanos a token
        (0, 1, 500),
        (12, 7, 12 * 340 + 7 * 500),
        (10**9, 10**9, 10**9 * 340 + 10**9 * 500),
    ],
)
def test_deepseek_charges(tokens_in: int, tokens_out: int, nanos: int) -> None:
    assert billing.charge(Usage(tokens_in, tokens_out), CATALOG.models["deepseek/deepseek-chat"]) == nanos


def test_hold_covers_max_tokens_and_is_at_least_the_charge_for_it() -> None:
    model = CATALOG.models["deepseek/deepseek-chat"]
    hold = billing.hold_amount(request("x" * 400, max_tokens=100), [model])
    assert hold >= billing.charge(Usage(100, 100), model)  # 400 chars are ~100 tokens at most... and 100 out


def test_hold_without_max_tokens_uses_the_model_max_output() -> None:
    model = CATALOG.models["openai/gpt-4o-mini"]
    hold = billing.hold_amount(request(), [model])
    assert hold >= billing.charge(Usage(0, model.max_output), model)
    assert hold < billing.charge(Usage(100, model.max_output), model)


def test_hold_is_for_the_dearest_candidate() -> None:
    cheap, dear = CATALOG.models["zhipu/glm-4-flash"], CATALOG.models["openai/gpt-5"]
    req = request(max_tokens=1000)
    assert billing.hold_amount(req, [cheap, dear]) == billing.hold_amount(req, [dear])


def test_chinese_text_is_not_underestimated() -> None:
    model = CATALOG.models["qwen/qwen-turbo"]
    text = "你好" * 1000  # about one token a character
    hold = billing.hold_amount(request(text, max_tokens=1), [model])
    assert hold >= billing.charge(Usage(2000, 1), model)


@pytest.mark.parametrize(
    ("usd", "first", "credits"),
    [
        ("4.99", True, 0),
        ("5", True, 100),
        ("5", False, 0),
        ("49.99", False, 0),
        ("50", False, 500),  # 10% of $50 = $5 = 500 credits
        ("100", False, 2000),
        ("100", True, 2100),
        ("500", False, 15000),
        ("2000", False, 70000),
    ],
)
def test_topup_bonuses(usd: str, first: bool, credits: int) -> None:
    earned = billing.bonuses(RULES, Decimal(usd), first)
    assert sum(n for _, n in earned) == credits * CREDIT


def test_expired_key_is_refused() -> None:
    caller = Caller("key_1", 1, expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(AuthenticationFailed) as info:
        billing.check_key(caller, ["deepseek/deepseek-chat"], dt.datetime.now(dt.UTC))
    assert info.value.code == "key_expired"


def test_key_allow_list() -> None:
    caller = Caller("key_1", 1, allowed_models=frozenset({"qwen/qwen-turbo"}))
    billing.check_key(caller, ["qwen/qwen-turbo"], dt.datetime.now(dt.UTC))
    with pytest.raises(PermissionDenied) as info:
        billing.check_key(caller, ["openai/gpt-5"], dt.datetime.now(dt.UTC))
    assert info.value.code == "model_not_allowed_for_key"
