"""Smart model ids through the running gateway with the openai SDK: the chosen model answers, is named in the
response and headers, is what the caller is billed for, and respects the key's allow-list and the request."""

from __future__ import annotations

import secrets
from decimal import Decimal

import openai
import pytest

from aipower import catalog as catalog_file
from aipower.money import cost, usd_text
from aipower.storage import keys as key_store
from tests.billing_helpers import balance_of, ledger_rows, on
from tests.conftest import Gateway, create_key
from tests.fakes.upstream import FakeUpstream

CATALOG = catalog_file.load()
DEMO_KEY = "sk-aipower-demo-public"
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def user_client(gateway: Gateway, allowed: frozenset[str] | None = None) -> tuple[openai.OpenAI, str]:
    email = f"smart-{secrets.token_hex(4)}@example.com"
    key, key_id = create_key(gateway.database_url, email, Decimal(50))
    if allowed is not None:
        restriction = key_store.KeyRestriction(allowed_models=allowed)
        on(gateway.database_url, lambda engine: key_store.restrict(engine, key_id, restriction))
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0), email


@pytest.mark.parametrize(
    ("model", "prompt", "chosen", "route"),
    [
        ("auto-cheap", "Hello!", "zhipu/glm-4-flash", "auto-cheap: cheapest of 8"),
        ("auto-free", "Hello!", "zhipu/glm-4-flash", "auto-free: cheapest under $0.50/M"),
        ("auto", "请用三句话介绍一下杭州西湖。", "qwen/qwen-plus", "auto: chinese"),
        ("auto", "What's a nice name for a sailboat?", "deepseek/deepseek-chat", "auto: chat"),
    ],
)
def test_a_smart_id_is_served_named_and_billed_as_the_chosen_model(
    gateway: Gateway, upstream: FakeUpstream, model: str, prompt: str, chosen: str, route: str
) -> None:
    client, email = user_client(gateway)
    with client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )
    reply = raw.parse()
    assert reply.model == chosen
    assert raw.headers["x-aipower-model"] == chosen
    assert raw.headers["x-aipower-route"] == f"{route} -> {chosen}"
    assert upstream.last.json["model"] == CATALOG.models[chosen].upstream
    charged = cost(12, 7, CATALOG.models[chosen].price)
    assert raw.headers["x-aipower-cost"] == usd_text(charged)
    assert [a for a, reason in ledger_rows(gateway.database_url, email) if reason == "usage"] == [-charged]


def test_vision_requests_only_go_to_vision_models(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _ = user_client(gateway)
    content = [{"type": "text", "text": "What is this?"}, IMAGE]
    with client:
        reply = client.chat.completions.create(model="auto-cheap", messages=[{"role": "user", "content": content}])
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="auto-free", messages=[{"role": "user", "content": content}])
    assert reply.model == "openai/gpt-4o-mini"  # the cheapest candidate that sees images
    assert (caught.value.status_code, caught.value.code) == (503, "no_route_available")
    assert len(upstream.requests) == 1


def test_the_key_allow_list_limits_the_choice(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _ = user_client(gateway, allowed=frozenset({"zhipu/glm-5.1", "deepseek/deepseek-reasoner"}))
    with client:
        best = client.chat.completions.with_raw_response.create(
            model="auto-best", messages=[{"role": "user", "content": "Plan a research agenda."}]
        )
    assert best.parse().model == "zhipu/glm-5.1"  # the best general rank this key may use
    assert best.headers["x-aipower-route"] == "auto-best: best general rank -> zhipu/glm-5.1"
    assert [r.path for r in upstream.requests] == ["/zhipu/chat/completions"]


def test_a_stream_names_the_chosen_model(gateway: Gateway, upstream: FakeUpstream) -> None:
    client, _ = user_client(gateway)
    with (
        client,
        client.chat.completions.with_streaming_response.create(
            model="auto-free", messages=[{"role": "user", "content": "Hi"}], stream=True
        ) as response,
    ):
        route = response.headers["x-aipower-route"]
        chunks = list(response.parse())
    assert route == "auto-free: cheapest under $0.50/M -> zhipu/glm-4-flash"
    assert {c.model for c in chunks} == {"zhipu/glm-4-flash"}


@pytest.mark.parametrize(
    ("model", "prompt", "chosen"),
    [
        ("auto", "Prove that there are infinitely many primes.", "deepseek/deepseek-chat"),  # math: deepseek-reasoner
        ("auto", "Write a haiku about the sea.", "qwen/qwen-plus"),  # creative: claude-sonnet for a paying user
        ("auto-best", "Plan a research agenda.", "deepseek/deepseek-chat"),  # claude-opus for a paying user
    ],
)
def test_a_free_tier_user_is_routed_to_a_free_model_on_a_trial_call(
    gateway: Gateway, upstream: FakeUpstream, model: str, prompt: str, chosen: str
) -> None:
    email = f"free-tier-{secrets.token_hex(4)}@example.com"
    key, _ = create_key(gateway.database_url, email, top_up=None, trial_calls=10)
    with openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )
    assert raw.headers["x-aipower-model"] == chosen and CATALOG.models[chosen].free
    assert [r.path for r in upstream.requests] == [f"/{CATALOG.models[chosen].provider}/chat/completions"]
    assert upstream.last.json["model"] == CATALOG.models[chosen].upstream
    assert raw.headers["x-aipower-cost"] == "0.00"
    assert ledger_rows(gateway.database_url, email) == [(0, "trial")]
    assert balance_of(gateway.database_url, email).trial_calls_left == 9


def test_a_free_tier_user_asking_for_a_premium_model_by_name_still_gets_403(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    key, _ = create_key(gateway.database_url, f"free-tier-{secrets.token_hex(4)}@example.com", top_up=None)
    with (
        openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client,
        pytest.raises(openai.PermissionDeniedError) as caught,
    ):
        client.chat.completions.create(model="anthropic/claude-opus", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "model_not_allowed_on_free_tier"
    assert upstream.requests == []


def test_the_demo_key_is_routed_to_a_demo_model(gateway: Gateway, upstream: FakeUpstream) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=DEMO_KEY, max_retries=0) as demo:
        raw = demo.chat.completions.with_raw_response.create(
            model="auto-best", messages=[{"role": "user", "content": "Plan a research agenda."}]
        )
    chosen = raw.headers["x-aipower-model"]
    assert chosen in gateway.settings.demo_models and chosen == "deepseek/deepseek-chat"  # best general rank of 3
    assert raw.headers["x-aipower-route"] == f"auto-best: best general rank -> {chosen}"
    assert [r.path for r in upstream.requests] == ["/deepseek/chat/completions"]
    assert raw.headers["x-aipower-cost"] == "0.00"


@pytest.mark.parametrize("model", ["auto", "auto-cheap"])
def test_a_max_tokens_no_model_of_the_route_can_write_is_a_400(
    gateway: Gateway, upstream: FakeUpstream, model: str
) -> None:
    """Not a 503 `no_route_available` that an SDK would retry: no retry can ever serve it."""
    sdk, email = user_client(gateway)
    before = balance_of(gateway.database_url, email)
    with sdk, pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=10**9)
    assert (refused.value.code, refused.value.param) == ("invalid_value", "max_tokens")
    assert upstream.requests == []
    assert balance_of(gateway.database_url, email) == before
