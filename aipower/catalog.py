"""The model catalog: providers, models, smart routes, loaded from TOML and validated once. Kernel layer.

The shipped `catalog.toml` is merged with an operator's files by id (table by table, key by key), then
validated into frozen specs. A bad file fails fast with the file, key and reason.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from aipower.money import Price

Capability = Literal["text", "vision", "tools", "json", "reasoning", "code"]
SMART_PREFIX = "auto"


class CatalogError(ValueError):
    """The catalog files are invalid; the message names the file or key."""


@dataclass(frozen=True, slots=True)
class Quirks:
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    drop: frozenset[str] = frozenset()
    stream_usage: bool = True  # upstream accepts stream_options.include_usage
    developer_role: bool = False  # upstream accepts role "developer" (else sent as "system")


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


@dataclass(frozen=True, slots=True)
class RouteSpec:
    id: str
    strategy: Literal["cheapest", "ordered"]
    candidates: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class Target:
    """One concrete place to send a request: a model at a provider endpoint with a key."""

    model: ModelSpec
    provider: ProviderSpec
    base_url: str
    api_key: str = field(repr=False)


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
    model_config = ConfigDict(extra="forbid")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    drop: list[str] = []
    stream_usage: bool = True
    developer_role: bool = False


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


class _RouteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["cheapest", "ordered"]
    candidates: list[str] = Field(min_length=1)
    description: str


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
    for route in routes.values():
        unknown = [c for c in route.candidates if c not in models]
        if unknown:
            raise CatalogError(f"catalog: routes.{route.id}.candidates: unknown models {unknown}")
    return Catalog(providers=providers, models=models, routes=routes, billing=_billing(parsed.billing))


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
    quirks = Quirks(
        max_tokens_field=p.quirks.max_tokens_field,
        drop=frozenset(p.quirks.drop),
        stream_usage=p.quirks.stream_usage,
        developer_role=p.quirks.developer_role,
    )
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
    )


def _route(rid: str, r: _RouteFile) -> RouteSpec:
    if not rid.startswith(SMART_PREFIX):
        raise CatalogError(f"catalog: routes.{rid}: route ids start with 'auto'")
    return RouteSpec(id=rid, strategy=r.strategy, candidates=tuple(r.candidates), description=r.description)
