"""aipower/gateway/routing.py: a model or smart-route id becomes a plan (ordered targets), for each caller and health.

The routing table below is the contract: for each smart id, caller tier and health, the model chosen first.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from aipower.catalog import Catalog, DeploymentSpec, Target, load
from aipower.errors import ModelNotFound, ProviderNotConfigured, UpstreamUnavailable
from aipower.gateway.deployments import resolve
from aipower.gateway.protocols import Caller, DeploymentHealth
from aipower.gateway.routing import Deployments, Needs, Plan, Router, RoutingContext, plan
from aipower.messages import ChatRequest, Image, Message, ResponseFormat, Text, Tool

WIRES = {"openai", "anthropic", "gemini"}
FREE = frozenset({"zhipu/glm-4-flash", "doubao/doubao-pro-256k", "qwen/qwen-turbo", "qwen/qwen-plus"})
DEMO = frozenset({"deepseek/deepseek-chat", "qwen/qwen-turbo", "zhipu/glm-4-flash"})  # Settings.demo_models
FREE_TIER = RoutingContext(free_only=True)
DEMO_KEY = RoutingContext(allowed=DEMO)  # what Router.plan makes of the demo key


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def every_key(catalog: Catalog) -> dict[str, str]:
    return {p.key_env[0]: "k" for p in catalog.providers.values()}


def deployed(catalog: Catalog, env: dict[str, str] | None = None) -> Deployments:
    return resolve(catalog, every_key(catalog) if env is None else env, WIRES)


def req(model: str, text: str = "Hello there, how are you?", **fields: Any) -> ChatRequest:
    image = fields.pop("image", False)
    parts = (Text(text), Image("https://example.com/cat.png")) if image else (Text(text),)
    return ChatRequest(model=model, messages=(Message(role="user", parts=parts),), **fields)


def opened(*model_ids: str) -> dict[str, DeploymentHealth]:
    return {
        f"{m}@{m.split('/')[0]}": DeploymentHealth(f"{m}@{m.split('/')[0]}", "open", retry_in=12.5) for m in model_ids
    }


def ids(targets: list[Target]) -> list[str]:
    return [t.model.id for t in targets]


TOOLS = (Tool(name="lookup", parameters_schema={"type": "object"}),)
CODE = "```python\ndef add(a, b):\n    return a - b\n```\nWhy does this function return the wrong result?"

# (smart id, request, context) -> the model planned first
TABLE: list[tuple[str, ChatRequest, RoutingContext, str]] = [
    ("auto-cheap", req("auto-cheap"), RoutingContext(), "zhipu/glm-4-flash"),
    ("auto-cheap", req("auto-cheap", image=True), RoutingContext(), "openai/gpt-4o-mini"),
    ("auto-cheap", req("auto-cheap", max_tokens=6000), RoutingContext(), "qwen/qwen-turbo"),  # others max 4096
    (
        "auto-cheap",
        req("auto-cheap"),
        RoutingContext(allowed=frozenset({"openai/gpt-4o-mini", "qwen/qwen-plus"})),
        "openai/gpt-4o-mini",  # 512 expected output tokens: $0.72/M beats qwen-plus's $1.87/M
    ),
    ("auto-cheap", req("auto-cheap"), RoutingContext(health=opened("zhipu/glm-4-flash")), "doubao/doubao-pro-256k"),
    ("auto-cheap", req("auto-cheap", "x" * 40_000), RoutingContext(), "zhipu/glm-4-flash"),  # 10K tokens: no 8K model
    ("auto-free", req("auto-free"), RoutingContext(), "zhipu/glm-4-flash"),
    ("auto-free", req("auto-free"), RoutingContext(free_only=True), "zhipu/glm-4-flash"),
    (
        "auto-free",
        req("auto-free", response_format=ResponseFormat("json_object")),
        RoutingContext(health=opened("zhipu/glm-4-flash", "doubao/doubao-pro-256k")),
        "moonshot/moonshot-v1-8k",
    ),
    ("auto-best", req("auto-best"), RoutingContext(), "anthropic/claude-opus"),
    ("auto-best", req("auto-best"), RoutingContext(health=opened("anthropic/claude-opus")), "openai/gpt-5"),
    (
        "auto-best",
        req("auto-best", tools=TOOLS),
        RoutingContext(allowed=frozenset({"deepseek/deepseek-reasoner", "zhipu/glm-5.1"})),
        "zhipu/glm-5.1",
    ),
    ("auto-best", req("auto-best", "y" * 1_200_000), RoutingContext(), "google/gemini-2.5-pro"),  # 300K tokens
    ("auto-code", req("auto-code", CODE), RoutingContext(), "anthropic/claude-opus"),
    (
        "auto-code",
        req("auto-code", CODE),
        RoutingContext(allowed=frozenset({"moonshot/kimi-k2.5", "deepseek/deepseek-chat"})),
        "moonshot/kimi-k2.5",
    ),
    ("auto-code", req("auto-code", CODE, tools=TOOLS), RoutingContext(free_only=True), "deepseek/deepseek-chat"),
    ("auto-fast", req("auto-fast"), RoutingContext(), "google/gemini-2.5-flash"),  # catalog priors
    (
        "auto-fast",
        req("auto-fast"),
        RoutingContext(
            health={
                "google/gemini-2.5-flash@google": DeploymentHealth(
                    "google/gemini-2.5-flash@google", ttft_ms=6000, tokens_per_s=20
                )
            }
        ),
        "qwen/qwen-turbo",
    ),
    ("auto-fast", req("auto-fast"), RoutingContext(free_only=True), "qwen/qwen-turbo"),
    ("auto", req("auto", CODE), RoutingContext(), "anthropic/claude-sonnet"),
    (
        "auto",
        req("auto", "Prove that there are infinitely many prime numbers."),
        RoutingContext(),
        "deepseek/deepseek-reasoner",
    ),
    ("auto", req("auto", "请帮我写一封感谢信给我的老师。"), RoutingContext(), "qwen/qwen-plus"),
    ("auto", req("auto", "Write a haiku about the sea."), RoutingContext(), "anthropic/claude-sonnet"),
    ("auto", req("auto", "What should I cook tonight?"), RoutingContext(), "deepseek/deepseek-chat"),
    ("auto", req("auto", "What is in this picture?", image=True), RoutingContext(), "openai/gpt-4o-mini"),
    ("auto", req("auto", "word " * 60_000), RoutingContext(), "google/gemini-2.5-flash"),
    ("auto", req("auto", CODE), RoutingContext(free_only=True), "deepseek/deepseek-chat"),
    ("auto", req("auto", "Write a haiku about the sea."), RoutingContext(free_only=True), "qwen/qwen-plus"),
    # Every smart id for a free-tier user and for the demo key. auto-best names no free or demo model: it picks
    # the best-ranked model the caller may use instead of answering 503.
    ("auto-cheap", req("auto-cheap"), FREE_TIER, "zhipu/glm-4-flash"),
    ("auto-cheap", req("auto-cheap", max_tokens=6000), FREE_TIER, "qwen/qwen-turbo"),
    ("auto-best", req("auto-best"), FREE_TIER, "deepseek/deepseek-chat"),
    ("auto-best", req("auto-best"), replace(FREE_TIER, health=opened("deepseek/deepseek-chat")), "qwen/qwen-plus"),
    ("auto-best", req("auto-best", "y" * 600_000), FREE_TIER, "doubao/doubao-pro-256k"),  # 150K tokens
    ("auto-fast", req("auto-fast", max_tokens=4000), FREE_TIER, "qwen/qwen-turbo"),
    ("auto", req("auto", "What should I cook tonight?"), FREE_TIER, "deepseek/deepseek-chat"),
    ("auto", req("auto", "Prove that there are infinitely many prime numbers."), FREE_TIER, "deepseek/deepseek-chat"),
    ("auto-cheap", req("auto-cheap"), DEMO_KEY, "zhipu/glm-4-flash"),
    ("auto-free", req("auto-free"), DEMO_KEY, "zhipu/glm-4-flash"),
    ("auto-best", req("auto-best"), DEMO_KEY, "deepseek/deepseek-chat"),
    ("auto-code", req("auto-code", CODE), DEMO_KEY, "deepseek/deepseek-chat"),
    ("auto-fast", req("auto-fast"), DEMO_KEY, "qwen/qwen-turbo"),
    ("auto", req("auto", "What should I cook tonight?"), DEMO_KEY, "deepseek/deepseek-chat"),
    ("auto", req("auto", "Write a haiku about the sea."), DEMO_KEY, "deepseek/deepseek-chat"),
    ("auto", req("auto", CODE), DEMO_KEY, "deepseek/deepseek-chat"),
]


@pytest.mark.parametrize(("route", "request_", "context", "expected"), TABLE)
def test_routing_table(
    catalog: Catalog, route: str, request_: ChatRequest, context: RoutingContext, expected: str
) -> None:
    planned = plan(request_, deployed(catalog), context)
    assert planned.targets[0].model.id == expected
    assert planned.reason is not None and planned.reason.startswith(route)
    for target in planned.targets:
        assert Needs.of(request_).fit(target.model)
        assert context.allowed is None or target.model.id in context.allowed
        assert target.model.free or not context.free_only
        assert target.deployment not in context.health or context.health[target.deployment].state != "open"


def test_free_only_plans_only_free_models(catalog: Catalog) -> None:
    for route in catalog.routes:
        planned = plan(req(route), deployed(catalog), RoutingContext(free_only=True))
        assert planned.targets and all(t.model.free for t in planned.targets), route


def test_the_demo_list_plans_only_demo_models(catalog: Catalog) -> None:
    for route in catalog.routes:
        planned = plan(req(route), deployed(catalog), DEMO_KEY)
        assert planned.targets and {t.model.id for t in planned.targets} <= DEMO, route


def test_a_route_whose_candidates_the_caller_may_not_use_picks_among_what_it_may(catalog: Catalog) -> None:
    allowed = RoutingContext(allowed=frozenset({"qwen/qwen-turbo", "doubao/doubao-pro-256k"}))
    best = plan(req("auto-best"), deployed(catalog), allowed)
    assert ids(best.targets) == ["doubao/doubao-pro-256k", "qwen/qwen-turbo"]  # general rank 64, then 62
    one_candidate = RoutingContext(allowed=frozenset({"qwen/qwen-turbo", "anthropic/claude-sonnet"}))
    assert ids(plan(req("auto-best"), deployed(catalog), one_candidate).targets) == ["anthropic/claude-sonnet"]


async def test_the_router_narrows_smart_routes_for_the_demo_key_and_the_free_tier(catalog: Catalog) -> None:
    router = Router(deployed(catalog), rng=random.Random(1))
    caller = Caller(key_id="k", user_id=1, allowed_models=frozenset({"qwen/qwen-turbo", "openai/gpt-5"}))
    assert ids((await router.plan(req("auto-best"), caller)).targets) == ["openai/gpt-5"]
    demo = await router.plan(req("auto-best"), caller, demo_models=DEMO)  # the allow-list and the demo list
    assert ids(demo.targets) == ["qwen/qwen-turbo"]
    free = await router.plan(req("auto-best"), Caller(key_id="k", user_id=1), free_only=True)
    assert ids(free.targets)[0] == "deepseek/deepseek-chat" and all(t.model.free for t in free.targets)
    plain = await router.plan(req("openai/gpt-5"), Caller(key_id="k", user_id=1), demo_models=DEMO)
    assert ids(plain.targets) == ["openai/gpt-5"]  # a plain id stays: the demo check answers it with a 403


@pytest.mark.parametrize(
    ("route", "request_", "context"),
    [
        ("auto-free", req("auto-free"), RoutingContext(allowed=frozenset({"openai/gpt-4o-mini"}))),
        ("auto-free", req("auto-free", image=True), RoutingContext()),  # no free model sees images
        ("auto-cheap", req("auto-cheap", "z" * 5_000_000), RoutingContext()),  # bigger than every context window
    ],
)
def test_nothing_fits_is_503_no_route_available(
    catalog: Catalog, route: str, request_: ChatRequest, context: RoutingContext
) -> None:
    with pytest.raises(UpstreamUnavailable) as raised:
        plan(request_, deployed(catalog), context)
    assert (raised.value.status, raised.value.code, raised.value.param) == (503, "no_route_available", "model")
    assert route in raised.value.message


def test_the_free_price_ceiling_is_catalog_data(catalog: Catalog) -> None:
    route = replace(catalog.routes["auto-free"], max_price=Decimal("0.15"))
    cheaper = replace(catalog, routes={**catalog.routes, "auto-free": route})
    planned = plan(req("auto-free"), deployed(cheaper), RoutingContext())
    assert ids(planned.targets) == ["zhipu/glm-4-flash", "doubao/doubao-pro-256k", "moonshot/moonshot-v1-8k"]
    assert planned.reason == "auto-free: cheapest under $0.15/M"


def test_a_plan_keeps_the_route_limit_in_cost_order(catalog: Catalog) -> None:
    planned = plan(req("auto-cheap"), deployed(catalog), RoutingContext())
    assert ids(planned.targets) == ["zhipu/glm-4-flash", "doubao/doubao-pro-256k", "moonshot/moonshot-v1-8k"]


def test_auto_names_the_class_and_falls_back_to_its_pool(catalog: Catalog) -> None:
    planned = plan(req("auto", CODE), deployed(catalog), RoutingContext())
    assert planned.reason == "auto: code"
    assert planned.describe("anthropic/claude-sonnet") == "auto: code -> anthropic/claude-sonnet"
    # The key allows no model of the code list: the route's candidates are used instead.
    narrow = RoutingContext(allowed=frozenset({"qwen/qwen-plus"}))
    assert ids(plan(req("auto", CODE), deployed(catalog), narrow).targets) == ["qwen/qwen-plus"]


# ---------------------------------------------------------------- plain model ids


def test_a_catalog_id_is_its_deployments_then_its_fallbacks(catalog: Catalog) -> None:
    deployments = deployed(catalog)
    planned = plan(req("qwen/qwen-plus"), deployments)
    assert ids(planned.targets) == ["qwen/qwen-plus", "qwen/qwen-turbo"]  # catalog: fallbacks = ["qwen/qwen-turbo"]
    assert planned.targets[0] == deployments.targets["qwen/qwen-plus"]
    assert planned.reason is None
    assert planned.describe("qwen/qwen-plus") is None
    assert planned.describe("qwen/qwen-turbo") == "fallback: qwen/qwen-plus -> qwen/qwen-turbo"


def test_the_callers_models_list_replaces_the_catalog_fallbacks(catalog: Catalog) -> None:
    request = req("qwen/qwen-plus", fallback_models=("deepseek/deepseek-chat", "qwen/qwen-plus", "zhipu/glm-4-flash"))
    assert ids(plan(request, deployed(catalog)).targets) == [
        "qwen/qwen-plus",
        "deepseek/deepseek-chat",
        "zhipu/glm-4-flash",
    ]


def test_fallbacks_the_caller_may_not_use_or_that_do_not_fit_are_dropped(catalog: Catalog) -> None:
    request = req(
        "openai/gpt-4o-mini", image=True, fallback_models=("deepseek/deepseek-chat", "google/gemini-2.5-flash")
    )
    allowed = frozenset({"openai/gpt-4o-mini", "deepseek/deepseek-chat", "google/gemini-2.5-flash"})
    assert ids(plan(request, deployed(catalog), RoutingContext(allowed=allowed)).targets) == [
        "openai/gpt-4o-mini",
        "google/gemini-2.5-flash",  # deepseek-chat has no vision
    ]
    only = RoutingContext(allowed=frozenset({"openai/gpt-4o-mini"}))
    assert ids(plan(request, deployed(catalog), only).targets) == ["openai/gpt-4o-mini"]


def test_a_smart_route_appends_the_callers_models(catalog: Catalog) -> None:
    request = req("auto-best", fallback_models=("qwen/qwen-turbo",))
    assert ids(plan(request, deployed(catalog)).targets)[-1] == "qwen/qwen-turbo"


@pytest.mark.parametrize(("model_id", "param"), [("gpt-4", "model"), ("auto-nonsense", "model"), ("", "model")])
def test_an_unknown_id_is_model_not_found(catalog: Catalog, model_id: str, param: str) -> None:
    with pytest.raises(ModelNotFound) as raised:
        plan(req(model_id), deployed(catalog))
    assert (raised.value.status, raised.value.code, raised.value.param) == (404, "model_not_found", param)


def test_an_unknown_fallback_is_model_not_found_on_models(catalog: Catalog) -> None:
    with pytest.raises(ModelNotFound) as raised:
        plan(req("qwen/qwen-plus", fallback_models=("nope/model",)), deployed(catalog))
    assert raised.value.param == "models" and "'nope/model'" in raised.value.message


def test_an_unconfigured_model_raises_its_stored_reason(catalog: Catalog) -> None:
    deployments = deployed(catalog, {"DEEPSEEK_API_KEY": "k"})
    with pytest.raises(ProviderNotConfigured) as raised:
        plan(req("qwen/qwen-plus"), deployments)
    assert raised.value is deployments.unavailable["qwen/qwen-plus"]


def test_an_unconfigured_model_with_a_configured_fallback_goes_to_it(catalog: Catalog) -> None:
    deployments = deployed(catalog, {"ZHIPU_API_KEY": "k"})
    assert ids(plan(req("doubao/doubao-pro-256k"), deployments).targets) == ["zhipu/glm-4-flash"]


def test_a_model_whose_breakers_are_all_open_is_503_circuit_open(catalog: Catalog) -> None:
    with pytest.raises(UpstreamUnavailable) as raised:
        plan(req("deepseek/deepseek-chat"), deployed(catalog), RoutingContext(health=opened("deepseek/deepseek-chat")))
    error = raised.value
    assert (error.status, error.code, error.retry_after) == (503, "circuit_open", 13)


def test_an_open_breaker_moves_a_model_to_its_fallback(catalog: Catalog) -> None:
    planned = plan(req("qwen/qwen-plus"), deployed(catalog), RoutingContext(health=opened("qwen/qwen-plus")))
    assert ids(planned.targets) == ["qwen/qwen-turbo"]


def test_half_open_deployments_stay_in_the_plan(catalog: Catalog) -> None:
    health = {"qwen/qwen-plus@qwen": DeploymentHealth("qwen/qwen-plus@qwen", "half-open")}
    assert (
        ids(plan(req("qwen/qwen-plus"), deployed(catalog), RoutingContext(health=health)).targets)[0]
        == "qwen/qwen-plus"
    )


# ---------------------------------------------------------------- deployments and weights


def two_deployments(catalog: Catalog, weights: tuple[int, int]) -> Deployments:
    model = catalog.models["deepseek/deepseek-chat"]
    spread = replace(
        model,
        deployments=(
            DeploymentSpec("ds@deepseek", "deepseek", "deepseek-chat", weights[0]),
            DeploymentSpec("ds@qwen", "qwen", "deepseek-v3", weights[1]),
        ),
    )
    return deployed(replace(catalog, models={**catalog.models, model.id: spread}))


def test_requests_spread_over_deployments_by_weight(catalog: Catalog) -> None:
    deployments = two_deployments(catalog, (3, 1))
    rng = random.Random(7)
    firsts = Counter(
        plan(req("deepseek/deepseek-chat"), deployments, RoutingContext(rng=rng)).targets[0].deployment
        for _ in range(2000)
    )
    assert 0.70 < firsts["ds@deepseek"] / 2000 < 0.80
    planned = plan(req("deepseek/deepseek-chat"), deployments, RoutingContext(rng=rng))
    assert {t.deployment for t in planned.targets} == {"ds@deepseek", "ds@qwen"}  # the other one is the failover
    qwen = next(t for t in planned.targets if t.deployment == "ds@qwen")
    assert (qwen.model.id, qwen.model.upstream, qwen.provider.id) == ("deepseek/deepseek-chat", "deepseek-v3", "qwen")


def test_a_weight_zero_deployment_is_only_a_standby(catalog: Catalog) -> None:
    deployments = two_deployments(catalog, (0, 1))
    for seed in range(50):
        planned = plan(req("deepseek/deepseek-chat"), deployments, RoutingContext(rng=random.Random(seed)))
        assert [t.deployment for t in planned.targets] == ["ds@qwen", "ds@deepseek"]


def test_an_open_deployment_is_skipped_and_the_other_serves(catalog: Catalog) -> None:
    health = {"ds@deepseek": DeploymentHealth("ds@deepseek", "open", retry_in=3)}
    planned = plan(req("deepseek/deepseek-chat"), two_deployments(catalog, (1, 1)), RoutingContext(health=health))
    assert [t.deployment for t in planned.targets] == ["ds@qwen"]


def test_plan_describe_names_the_served_model() -> None:
    assert Plan("auto-cheap", [], "auto-cheap: cheapest of 5").describe("zhipu/glm-4-flash") == (
        "auto-cheap: cheapest of 5 -> zhipu/glm-4-flash"
    )
