"""Routing: a model id or smart route id becomes a plan, an ordered list of targets to try. Domain layer.

`plan()` is pure: given the catalog's deployments, the request, who is calling and the health of every
deployment, it picks the models (a smart route's strategy, or the model and its fallbacks), keeps only what the
caller may use, what fits the request and what is not switched off by an open circuit breaker, and orders each
model's deployments by weighted random choice. `Router` feeds it the health store and an injectable RNG and clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aipower import money
from aipower.catalog import Catalog, ModelSpec, RouteSpec, Target
from aipower.errors import GatewayError, InvalidRequest, ModelNotFound, UpstreamError, UpstreamUnavailable
from aipower.gateway import classifier, tokens
from aipower.gateway.health import MemoryHealthStore
from aipower.gateway.protocols import Caller, CallOutcome, DeploymentHealth, HealthStore
from aipower.messages import ChatRequest, Image, Usage

EXPECTED_OUTPUT_TOKENS = 512  # what auto-cheap and auto-fast assume when the request sets no max_tokens
_UNMEASURED_SECONDS = 60.0  # auto-fast: a model with neither measurements nor a catalog prior goes last


@dataclass(frozen=True, slots=True)
class Deployments:
    """What the catalog can serve right now: every model's configured deployments, a reason for the others."""

    catalog: Catalog
    targets: Mapping[str, Target]  # each servable model's first deployment
    unavailable: Mapping[str, GatewayError]
    pools: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)  # every configured deployment

    def pool(self, model_id: str) -> tuple[Target, ...]:
        if model_id in self.pools:
            return self.pools[model_id]
        return (self.targets[model_id],) if model_id in self.targets else ()


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Who is calling and what is healthy now."""

    allowed: frozenset[str] | None = None  # the key's allow-list of model ids (None: any)
    free_only: bool = False  # only `free = true` models (a user below the premium unlock)
    health: Mapping[str, DeploymentHealth] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request requires of a model."""

    prompt_tokens: int
    max_tokens: int | None
    capabilities: frozenset[str]

    @classmethod
    def of(cls, request: ChatRequest) -> Needs:
        caps = set()
        if any(isinstance(p, Image) for m in request.messages for p in m.parts):
            caps.add("vision")
        if request.tools:
            caps.add("tools")
        if request.response_format is not None and request.response_format.type != "text":
            caps.add("json")
        return cls(tokens.estimate_prompt(request), request.max_tokens, frozenset(caps))

    def fit(self, model: ModelSpec) -> bool:
        if not self.capabilities <= model.capabilities:
            return False
        if self.max_tokens is not None and self.max_tokens > model.max_output:
            return False
        return self.prompt_tokens + (self.max_tokens or 0) <= model.context


@dataclass(frozen=True, slots=True)
class Plan:
    """The targets to try in order, and why (the smart route and its reason; None for a plain model id)."""

    requested: str
    targets: list[Target]
    reason: str | None = None

    def describe(self, served: str) -> str | None:
        """The x-aipower-route header: one short reason, naming the model that answered."""
        if self.reason is not None:
            return f"{self.reason} -> {served}"
        return None if served == self.requested else f"fallback: {self.requested} -> {served}"


def plan(request: ChatRequest, deployments: Deployments, context: RoutingContext | None = None) -> Plan:
    """The plan for a request; raises when the id is unknown or nothing can serve it."""
    context = context or RoutingContext()
    model_id = request.model
    catalog = deployments.catalog
    if model_id in catalog.models:
        return _model_plan(request, deployments, context)
    route = catalog.routes.get(model_id)
    if route is None:
        raise _not_found(model_id, "model")
    return _route_plan(route, request, deployments, context)


def _model_plan(request: ChatRequest, deployments: Deployments, context: RoutingContext) -> Plan:
    """The model itself (the key check and the upstream judge it), then its fallbacks that suit the caller."""
    model = deployments.catalog.models[request.model]
    fallbacks = _fallbacks(request, model.fallbacks, deployments, context)
    targets = _targets([model, *fallbacks], deployments, context)
    if not targets:
        if not deployments.pool(request.model):
            raise deployments.unavailable[request.model]
        raise _circuit_open(request.model, deployments, context)
    return Plan(request.model, targets)


def _fallbacks(
    request: ChatRequest, catalog_list: Sequence[str], deployments: Deployments, context: RoutingContext
) -> list[ModelSpec]:
    listed = request.fallback_models or catalog_list
    for model_id in listed:
        if model_id not in deployments.catalog.models:
            raise _not_found(model_id, "models")
    needs = Needs.of(request)
    models = [deployments.catalog.models[m] for m in listed if m != request.model]
    return [m for m in models if _eligible(m, needs, deployments, context)]


def _refuse_impossible_length(route: RouteSpec, needs: Needs, catalog: Catalog) -> None:
    """A max_tokens beyond what any model of the route can write is the caller's 400, not a 503 to retry."""
    largest = max((catalog.models[c].max_output for c in route.candidates if c in catalog.models), default=0)
    if needs.max_tokens is not None and needs.max_tokens > largest:
        raise InvalidRequest(
            f"max_tokens is {needs.max_tokens}, more than any model behind '{route.id}' can write (at most {largest}).",
            param="max_tokens",
            code="invalid_value",
        )


def _route_plan(route: RouteSpec, request: ChatRequest, deployments: Deployments, context: RoutingContext) -> Plan:
    needs = Needs.of(request)
    catalog = deployments.catalog
    label = classifier.classify(request) if route.strategy == "classify" else ""
    pool = _pool(route, label, needs, deployments, context)
    eligible = [m for m in (catalog.models[c] for c in pool) if _eligible(m, needs, deployments, context)]
    ordered, reason = _order(route, label, needs, eligible, deployments, context)
    chosen = ordered[: route.limit]
    chosen += [m for m in _fallbacks(request, (), deployments, context) if m not in chosen]
    targets = _targets(chosen, deployments, context)
    if not targets:
        _refuse_impossible_length(route, needs, catalog)
        raise UpstreamUnavailable(
            f"No model behind '{route.id}' can serve this request now: none of {', '.join(route.candidates)} is "
            "configured, allowed for this key, healthy, and fits the request (context window, vision, tools, "
            "JSON mode" + (f", at most ${route.max_price} per 1M tokens" if route.max_price is not None else "") + ").",
            code="no_route_available",
            param="model",
        )
    return Plan(route.id, targets, reason)


def _pool(
    route: RouteSpec, label: str, needs: Needs, deployments: Deployments, context: RoutingContext
) -> Sequence[str]:
    """The models a route chooses among: for `classify`, the class's preferred list if any of it is eligible;
    the whole catalog when the caller may use none of the route's candidates."""
    preferred = dict(route.classes).get(label, ())
    models = deployments.catalog.models
    if any(_eligible(models[m], needs, deployments, context) for m in preferred):
        return preferred
    if not any(_permitted(models[m], context) for m in route.candidates):
        # None of the route's choices is the caller's to use (free tier, demo key, allow-list): the strategy picks
        # among every model the caller may use instead, so `auto-best` is the best of those, not a 503.
        return tuple(models)
    return route.candidates


def _order(
    route: RouteSpec,
    label: str,
    needs: Needs,
    models: list[ModelSpec],
    deployments: Deployments,
    context: RoutingContext,
) -> tuple[list[ModelSpec], str]:
    cost = _cost_key(needs)
    match route.strategy:
        case "cheapest":
            return sorted(models, key=cost), f"{route.id}: cheapest of {len(models)}"
        case "free":
            ceiling = route.max_price
            under = [m for m in models if ceiling is not None and max(m.price.input, m.price.output) <= ceiling]
            return sorted(under, key=cost), f"{route.id}: cheapest under ${ceiling}/M"
        case "ranked":
            task = route.task or "general"
            ranked = [m for m in models if m.rank(task) is not None]
            return sorted(ranked, key=lambda m: (-(m.rank(task) or 0), *cost(m))), f"{route.id}: best {task} rank"
        case "fastest":
            speed = {m.id: _expected_seconds(m, needs, deployments, context) for m in models}
            return sorted(models, key=lambda m: (speed[m.id], *cost(m))), f"{route.id}: lowest latency"
        case "classify":
            return models, f"{route.id}: {label}"
        case "ordered":
            return models, f"{route.id}: first available"


def _permitted(model: ModelSpec, context: RoutingContext) -> bool:
    """May this caller use the model at all (its key's allow-list or the demo models, and its tier)?"""
    if context.allowed is not None and model.id not in context.allowed:
        return False
    return model.free or not context.free_only


def _eligible(model: ModelSpec, needs: Needs, deployments: Deployments, context: RoutingContext) -> bool:
    if not _permitted(model, context):
        return False
    return needs.fit(model) and any(_usable(t, context) for t in deployments.pool(model.id))


def _usable(target: Target, context: RoutingContext) -> bool:
    health = context.health.get(target.deployment)
    return health is None or health.state != "open"


def _targets(models: Iterable[ModelSpec], deployments: Deployments, context: RoutingContext) -> list[Target]:
    """Each model's usable deployments, spread by weight (weighted random order, weight 0 last)."""
    targets: list[Target] = []
    for model in models:
        usable = [t for t in deployments.pool(model.id) if _usable(t, context)]
        keys = {t.deployment: context.rng.random() ** (1 / t.weight) if t.weight > 0 else -1.0 for t in usable}
        targets += sorted(usable, key=lambda t: -keys[t.deployment])
    return targets


def _cost_key(needs: Needs) -> Callable[[ModelSpec], tuple[int, str]]:
    output = needs.max_tokens or EXPECTED_OUTPUT_TOKENS
    return lambda m: (money.cost(needs.prompt_tokens, output, m.price), m.id)


def _expected_seconds(model: ModelSpec, needs: Needs, deployments: Deployments, context: RoutingContext) -> float:
    """Time to first token plus generation time, measured (best deployment) or else the catalog's prior."""
    output = needs.max_tokens or EXPECTED_OUTPUT_TOKENS
    prior = model.latency
    best = _UNMEASURED_SECONDS
    for target in deployments.pool(model.id):
        health = context.health.get(target.deployment)
        ttft_ms = health.ttft_ms if health and health.ttft_ms is not None else (prior.ttft_ms if prior else None)
        speed = health.tokens_per_s if health and health.tokens_per_s else (prior.tokens_per_s if prior else None)
        if ttft_ms is not None and speed:
            best = min(best, ttft_ms / 1000 + output / speed)
    return best


def _not_found(model_id: str, param: str) -> ModelNotFound:
    return ModelNotFound(
        f"The model '{model_id}' does not exist. GET /v1/models lists the available model ids.", param=param
    )


def _circuit_open(model_id: str, deployments: Deployments, context: RoutingContext) -> UpstreamUnavailable:
    waits = [
        h.retry_in
        for t in deployments.pool(model_id)
        if (h := context.health.get(t.deployment)) is not None and h.retry_in is not None
    ]
    retry = int(min(waits) + 0.999) if waits else None
    return UpstreamUnavailable(
        f"The model '{model_id}' is temporarily unavailable: its provider failed repeatedly and is being rested"
        + (f"; retry in {retry}s." if retry is not None else "."),
        code="circuit_open",
        param="model",
        retry_after=retry,
    )


class Router:
    """Plans with live health, admits half-open probes, records outcomes, and keeps the failover time budget."""

    def __init__(
        self,
        deployments: Deployments,
        health: HealthStore | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        budget: float = 30.0,
    ) -> None:
        self.deployments = deployments
        self.health: HealthStore = health or MemoryHealthStore()
        self._rng = rng or random.Random()
        self.clock = clock
        self._budget = budget
        self._ids = [t.deployment for pool in deployments.pools.values() for t in pool]

    async def plan(
        self,
        request: ChatRequest,
        caller: Caller,
        *,
        free_only: bool = False,
        demo_models: frozenset[str] | None = None,
    ) -> Plan:
        """The plan for this caller: `free_only` for a user below the premium unlock, `demo_models` for the demo
        key (each narrows what smart routes choose from; a plain model id is still judged by the key check)."""
        allowed = caller.allowed_models
        if demo_models is not None:
            allowed = demo_models if allowed is None else allowed & demo_models
        context = RoutingContext(
            allowed=allowed, free_only=free_only, health=await self.health.read(self._ids), rng=self._rng
        )
        return plan(request, self.deployments, context)

    def deadline(self) -> float:
        return self.clock() + self._budget

    def expired(self, deadline: float) -> bool:
        return self.clock() >= deadline

    async def admit(self, target: Target) -> bool:
        return await self.health.admit(target.deployment)

    async def succeeded(self, target: Target, began: float, usage: Usage | None = None, stream: bool = False) -> None:
        elapsed = max(self.clock() - began, 1e-6)
        if stream:
            await self.health.record(CallOutcome(target.deployment, ok=True, ttft=elapsed))
        else:
            speed = usage.output_tokens / elapsed if usage is not None and usage.output_tokens > 0 else None
            await self.health.record(CallOutcome(target.deployment, ok=True, tokens_per_s=speed))

    async def streamed(self, target: Target, first: float, last: float, output_tokens: int) -> None:
        """A finished stream's generation rate: output tokens over the seconds between its first and last event."""
        if output_tokens > 0 and last > first:
            await self.health.record_speed(target.deployment, output_tokens / (last - first))

    async def failed(self, target: Target, error: UpstreamError) -> None:
        """A retryable failure counts against the deployment; any other answer shows it is up."""
        await self.health.record(CallOutcome(target.deployment, ok=not error.retryable))

    def skipped(self, targets: Sequence[Target]) -> UpstreamUnavailable:
        """The error when every target was skipped (a probe of each half-open breaker already in flight)."""
        names = ", ".join(dict.fromkeys(t.model.id for t in targets))
        return UpstreamUnavailable(
            f"Every provider for {names} is being rested after repeated failures; retry shortly.",
            code="circuit_open",
            param="model",
            retry_after=1,
        )

    async def report(self) -> list[tuple[Target, DeploymentHealth]]:
        states = await self.health.read(self._ids)
        return [(t, states[t.deployment]) for pool in self.deployments.pools.values() for t in pool]
