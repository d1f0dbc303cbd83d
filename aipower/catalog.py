"""The model catalog: providers, models, smart routes, loaded from TOML and validated once. Kernel layer.

The shipped `catalog.toml` is merged with an operator's files by id (table by table, key by key), then
validated into frozen specs. A bad file fails fast with the file, key and reason.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from aipower.money import Price

Capability = Literal["text", "vision", "tools", "json", "reasoning", "code"]
RouteStrategy = Literal["cheapest", "ordered", "free", "ranked", "fastest", "classify"]
SMART_PREFIX = "auto"


class CatalogError(ValueError):
    """The catalog files are invalid; the message names the file or key."""


# How `reasoning_effort` reaches an OpenAI-compatible upstream (docs/providers/openai-compatible.md):
# passthrough as is; unsupported (only "none", which is not sent); always (the model always reasons: anything
# but "none", not sent); enable_thinking + thinking_budget (Qwen); thinking = {"type": enabled|disabled}.
ReasoningKnob = Literal["passthrough", "unsupported", "always", "enable_thinking", "thinking_type"]
ToolChoiceKind = Literal["auto", "none", "required", "function"]
# What happens to an earlier assistant turn's reasoning (docs/providers/openai-compatible.md): drop it (OpenAI has no
# such input field); send it back as `reasoning_content`; or send it, and "" on a tool-call turn that has none while
# thinking is on (the provider answers 400 when a thinking tool-call turn comes back without it).
ReasoningHistory = Literal["drop", "send", "required"]


@dataclass(frozen=True, slots=True)
class Quirks:
    """How an OpenAI-compatible provider, or one model of it, departs from OpenAI. Resolved once, at load."""

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    drop: frozenset[str] = frozenset()  # accepted from callers, not sent (each one's reason is in the docs)
    reject: frozenset[str] = frozenset()  # 400 naming the field, unless its value asks for nothing
    rename: tuple[tuple[str, str], ...] = ()  # (OpenAI name, upstream name), e.g. Zhipu's user -> user_id
    stream_usage: bool = True  # upstream accepts stream_options.include_usage
    developer_role: bool = False  # upstream accepts role "developer" (else sent as "system")
    max_n: int = 128  # choices per request; n above it is a 400
    tool_choice: frozenset[ToolChoiceKind] = frozenset(("auto", "none", "required", "function"))
    json_schema: bool = True  # upstream honours response_format json_schema (else a 400)
    reasoning: ReasoningKnob = "passthrough"
    thinking_budgets: tuple[tuple[str, int], ...] = ()  # enable_thinking: reasoning_effort -> thinking_budget
    think_tags: bool = False  # reasoning arrives inline, as <think>...</think> opening the content
    reasoning_history: ReasoningHistory = "drop"
    thinking_streams: bool = False  # enable_thinking works only on streamed calls: others are streamed and folded


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    id: str
    name: str
    wire: str
    base_url: str
    key_env: tuple[str, ...]
    base_url_env: str
    quirks: Quirks = field(default_factory=Quirks)


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One place a catalog model is served: a provider, its name for the model, a key, a share of traffic."""

    id: str  # "<model id>@<provider>" unless the catalog names it
    provider: str
    upstream: str
    weight: int = 1
    key_env: tuple[str, ...] = ()  # empty: the provider's key variables
    base_url_env: str | None = None  # None: the provider's <ID>_BASE_URL


@dataclass(frozen=True, slots=True)
class LatencyPrior:
    """What auto-fast assumes before real traffic has been measured."""

    ttft_ms: int
    tokens_per_s: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    name: str
    provider: str
    upstream: str
    context: int
    max_output: int
    price: Price
    capabilities: frozenset[str]
    free: bool
    created: int
    deployments: tuple[DeploymentSpec, ...] = ()
    fallbacks: tuple[str, ...] = ()
    ranks: tuple[tuple[str, int], ...] = ()  # (task, score 0-100) for auto-best / auto-code
    latency: LatencyPrior | None = None
    # (provider id, this model's quirks there) for every provider serving it: provider quirks + the model's own.
    quirks: tuple[tuple[str, Quirks], ...] = ()

    def quirks_at(self, provider: ProviderSpec) -> Quirks:
        """This model's quirks at `provider` (precomputed at load; the provider's own if never resolved)."""
        for pid, quirks in self.quirks:
            if pid == provider.id:
                return quirks
        return provider.quirks

    def rank(self, task: str) -> int | None:
        return next((score for name, score in self.ranks if name == task), None)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    id: str
    strategy: RouteStrategy
    candidates: tuple[str, ...]
    description: str
    task: str | None = None  # ranked: the rank that orders candidates
    max_price: Decimal | None = None  # free: USD per 1M tokens, input and output
    classes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # classify: prompt class -> preferred models
    limit: int = 3  # how many models a plan keeps (the hold covers the dearest of them)


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete place to send a request: a model at a provider endpoint with a key."""

    model: ModelSpec
    provider: ProviderSpec
    base_url: str
    api_key: str = field(repr=False)
    deployment: str = ""  # the DeploymentSpec id: what the circuit breaker and latency stats are kept by
    weight: int = 1


@dataclass(frozen=True, slots=True)
class BonusTier:
    min_usd: Decimal
    percent: int


@dataclass(frozen=True, slots=True)
class BillingRules:
    trial_calls: int = 10
    unlock_topup_usd: Decimal = Decimal(5)
    first_topup_min_usd: Decimal = Decimal(5)
    first_topup_credits: int = 100
    topup_bonus: tuple[BonusTier, ...] = ()


@dataclass(frozen=True, slots=True)
class Catalog:
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    routes: Mapping[str, RouteSpec]
    billing: BillingRules = field(default_factory=BillingRules)


class _QuirksFile(BaseModel):
    """A provider's or a model's `quirks`; unset keys inherit (provider from the defaults, model from its provider)."""

    model_config = ConfigDict(extra="forbid")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    drop: list[str] | None = None  # a model's drop and reject lists add to its provider's
    reject: list[str] | None = None
    rename: dict[str, str] | None = None
    stream_usage: bool | None = None
    developer_role: bool | None = None
    max_n: int | None = Field(default=None, ge=1)
    tool_choice: list[ToolChoiceKind] | None = None
    json_schema: bool | None = None
    reasoning: ReasoningKnob | None = None
    thinking_budgets: dict[str, Annotated[int, Field(gt=0)]] | None = None
    think_tags: bool | None = None
    reasoning_history: ReasoningHistory | None = None
    thinking_streams: bool | None = None

    def over(self, base: Quirks) -> Quirks:
        """These quirks merged over `base`: a model's over its provider's."""
        changes: dict[str, Any] = {k: v for k, v in self.model_dump(exclude_none=True).items()}
        for key in ("drop", "reject"):
            if key in changes:
                changes[key] = getattr(base, key) | frozenset(changes[key])
        if "tool_choice" in changes:
            changes["tool_choice"] = frozenset(changes["tool_choice"])
        for key in ("rename", "thinking_budgets"):
            if key in changes:
                changes[key] = tuple(sorted(changes[key].items()))
        return replace(base, **changes)


class _ProviderFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    wire: str
    base_url: str
    key_env: list[str] = []
    quirks: _QuirksFile = _QuirksFile()


def _no_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError('write money as decimal strings, e.g. "0.34", never as floats')
    return value


_Usd = Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0)]


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: _Usd
    output: _Usd


class _DeploymentFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    provider: str | None = None
    upstream: str | None = None
    weight: int = Field(default=1, ge=0)
    key_env: list[str] = []
    base_url_env: str | None = None


class _LatencyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttft_ms: int = Field(gt=0)
    tokens_per_s: int = Field(gt=0)


class _ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    provider: str
    upstream: str
    context: int = Field(gt=0)
    max_output: int = Field(gt=0)
    price: _PriceFile
    capabilities: list[Capability] = []
    free: bool = False
    released: dt.date
    deployments: list[_DeploymentFile] = []
    fallbacks: list[str] = []
    ranks: dict[str, Annotated[int, Field(ge=0, le=100)]] = {}
    latency: _LatencyFile | None = None
    quirks: _QuirksFile | None = None  # merged over each serving provider's quirks


class _RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: RouteStrategy
    candidates: list[str] = Field(min_length=1)
    description: str
    task: str | None = None
    max_price: _Usd | None = None
    classes: dict[str, list[str]] = {}
    limit: int = Field(default=3, ge=1)


class _FirstBonusFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_usd: _Usd
    credits: int = Field(ge=0)


class _BonusTierFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_usd: _Usd
    percent: int = Field(ge=0, le=1000)


class _BillingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trial_calls: int = Field(default=10, ge=0)
    unlock_topup_usd: _Usd = Decimal(5)
    first_topup_bonus: _FirstBonusFile = _FirstBonusFile(min_usd=Decimal(5), credits=100)
    topup_bonus: list[_BonusTierFile] = []


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    providers: dict[str, _ProviderFile] = {}
    models: dict[str, _ModelFile] = {}
    routes: dict[str, _RouteFile] = {}
    billing: _BillingFile = _BillingFile()


def load(paths: Sequence[Path] = ()) -> Catalog:
    """The shipped catalog merged with the operator's files, in order."""
    shipped = resources.files("aipower").joinpath("catalog.toml").read_text("utf-8")
    merged = tomllib.loads(shipped)
    for path in paths:
        merged = _merge(merged, _read(path))
    where = ", ".join(str(p) for p in paths) or "the shipped catalog.toml"
    try:
        parsed = _CatalogFile.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise CatalogError(f"catalog ({where}): {key}: {first['msg']}") from exc
    try:
        return _build(parsed)
    except CatalogError as exc:
        raise CatalogError(str(exc).replace("catalog:", f"catalog ({where}):", 1)) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise CatalogError(f"catalog file {path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog file {path}: {exc}") from exc


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(parsed: _CatalogFile) -> Catalog:
    providers = {pid: _provider(pid, p) for pid, p in parsed.providers.items()}
    models = {mid: _model(mid, m) for mid, m in parsed.models.items()}
    routes = {rid: _route(rid, r) for rid, r in parsed.routes.items()}
    for model in models.values():
        if model.provider not in providers:
            raise CatalogError(f"catalog: models.{model.id}.provider: unknown provider {model.provider!r}")
        if model.id.startswith(SMART_PREFIX):
            raise CatalogError(f"catalog: models.{model.id}: ids starting with 'auto' are reserved for routes")
    for model in models.values():
        _check_model_links(model, models, providers)
    models = {mid: _with_quirks(model, parsed.models[mid].quirks, providers) for mid, model in models.items()}
    for route in routes.values():
        unknown = [c for c in route.candidates if c not in models]
        if unknown:
            raise CatalogError(f"catalog: routes.{route.id}.candidates: unknown models {unknown}")
        for name, listed in route.classes:
            unknown = [c for c in listed if c not in models]
            if unknown:
                raise CatalogError(f"catalog: routes.{route.id}.classes.{name}: unknown models {unknown}")
    return Catalog(providers=providers, models=models, routes=routes, billing=_billing(parsed.billing))


def _check_model_links(model: ModelSpec, models: Mapping[str, ModelSpec], providers: Mapping[str, object]) -> None:
    unknown = [f for f in model.fallbacks if f not in models]
    if unknown:
        raise CatalogError(f"catalog: models.{model.id}.fallbacks: unknown models {unknown}")
    for d in model.deployments:
        if d.provider not in providers:
            raise CatalogError(f"catalog: models.{model.id}.deployments: unknown provider {d.provider!r}")
    ids = [d.id for d in model.deployments]
    if len(set(ids)) != len(ids):
        raise CatalogError(f"catalog: models.{model.id}.deployments: ids must be unique (give each an id)")


def _with_quirks(model: ModelSpec, own: _QuirksFile | None, providers: Mapping[str, ProviderSpec]) -> ModelSpec:
    serving = dict.fromkeys([model.provider, *(d.provider for d in model.deployments)])
    quirks = tuple((pid, own.over(providers[pid].quirks) if own else providers[pid].quirks) for pid in serving)
    return replace(model, quirks=quirks)


def _billing(b: _BillingFile) -> BillingRules:
    tiers = sorted((BonusTier(t.min_usd, t.percent) for t in b.topup_bonus), key=lambda t: t.min_usd)
    return BillingRules(
        trial_calls=b.trial_calls,
        unlock_topup_usd=b.unlock_topup_usd,
        first_topup_min_usd=b.first_topup_bonus.min_usd,
        first_topup_credits=b.first_topup_bonus.credits,
        topup_bonus=tuple(tiers),
    )


def _provider(pid: str, p: _ProviderFile) -> ProviderSpec:
    upper = pid.upper().replace("-", "_")
    key_env = tuple(dict.fromkeys([f"{upper}_API_KEY", *p.key_env]))
    quirks = p.quirks.over(Quirks())
    return ProviderSpec(
        id=pid,
        name=p.name,
        wire=p.wire,
        base_url=p.base_url.rstrip("/"),
        key_env=key_env,
        base_url_env=f"{upper}_BASE_URL",
        quirks=quirks,
    )


def _model(mid: str, m: _ModelFile) -> ModelSpec:
    created = int(dt.datetime.combine(m.released, dt.time(), tzinfo=dt.UTC).timestamp())
    return ModelSpec(
        id=mid,
        name=m.name,
        provider=m.provider,
        upstream=m.upstream,
        context=m.context,
        max_output=m.max_output,
        price=Price(input=m.price.input, output=m.price.output),
        capabilities=frozenset(m.capabilities),
        free=m.free,
        created=created,
        deployments=_deployments(mid, m),
        fallbacks=tuple(m.fallbacks),
        ranks=tuple(sorted(m.ranks.items())),
        latency=LatencyPrior(m.latency.ttft_ms, m.latency.tokens_per_s) if m.latency else None,
    )


def _deployments(mid: str, m: _ModelFile) -> tuple[DeploymentSpec, ...]:
    """The model's deployments; none listed means one: its provider, its upstream name, weight 1."""
    listed = m.deployments or [_DeploymentFile()]
    return tuple(
        DeploymentSpec(
            id=d.id or f"{mid}@{d.provider or m.provider}",
            provider=d.provider or m.provider,
            upstream=d.upstream or m.upstream,
            weight=d.weight,
            key_env=tuple(d.key_env),
            base_url_env=d.base_url_env,
        )
        for d in listed
    )


def _route(rid: str, r: _RouteFile) -> RouteSpec:
    if not rid.startswith(SMART_PREFIX):
        raise CatalogError(f"catalog: routes.{rid}: route ids start with 'auto'")
    needs = {"ranked": ("task", r.task), "free": ("max_price", r.max_price), "classify": ("classes", r.classes)}
    if r.strategy in needs and not needs[r.strategy][1]:
        raise CatalogError(f"catalog: routes.{rid}.{needs[r.strategy][0]}: required by strategy {r.strategy!r}")
    return RouteSpec(
        id=rid,
        strategy=r.strategy,
        candidates=tuple(r.candidates),
        description=r.description,
        task=r.task,
        max_price=r.max_price,
        classes=tuple((name, tuple(listed)) for name, listed in r.classes.items()),
        limit=r.limit,
    )
