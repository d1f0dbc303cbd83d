"""Which catalog models can be served, and where: a target per configured deployment, from the provider keys and
base URLs in the settings. Pure. Domain layer."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from aipower.catalog import Catalog, DeploymentSpec, ModelSpec, ProviderSpec, Target
from aipower.errors import GatewayError, ProviderNotConfigured, UpstreamUnavailable
from aipower.gateway.routing import Deployments


def resolve(catalog: Catalog, provider_env: Mapping[str, str], wires: Collection[str]) -> Deployments:
    """Every configured deployment of every model (its pool); a reason for each model with none."""
    pools: dict[str, tuple[Target, ...]] = {}
    unavailable: dict[str, GatewayError] = {}
    for model in catalog.models.values():
        pool: list[Target] = []
        reason: GatewayError | None = None
        for spec in model.deployments:
            provider = catalog.providers[spec.provider]
            key = _key(spec, provider, provider_env)
            if provider.wire not in wires:
                reason = reason or _unsupported(model, provider)
            elif key is None:
                reason = _not_configured(model, provider, spec)
            else:
                pool.append(_target(model, spec, provider, key, provider_env))
        if pool:
            pools[model.id] = tuple(pool)
        else:
            assert reason is not None
            unavailable[model.id] = reason
    targets = {model_id: pool[0] for model_id, pool in pools.items()}
    return Deployments(catalog=catalog, targets=targets, unavailable=unavailable, pools=pools)


def _target(
    model: ModelSpec, spec: DeploymentSpec, provider: ProviderSpec, key: str, provider_env: Mapping[str, str]
) -> Target:
    base_url = provider_env.get(spec.base_url_env or provider.base_url_env, provider.base_url).rstrip("/")
    served = model
    if (spec.provider, spec.upstream) != (model.provider, model.upstream):
        served = replace(model, provider=spec.provider, upstream=spec.upstream)
    return Target(
        model=served, provider=provider, base_url=base_url, api_key=key, deployment=spec.id, weight=spec.weight
    )


def _key(spec: DeploymentSpec, provider: ProviderSpec, provider_env: Mapping[str, str]) -> str | None:
    for name in spec.key_env or provider.key_env:
        if provider_env.get(name):
            return provider_env[name]
    return None


def provider_key(provider: ProviderSpec, provider_env: Mapping[str, str]) -> str | None:
    for name in provider.key_env:
        if provider_env.get(name):
            return provider_env[name]
    return None


def _not_configured(model: ModelSpec, provider: ProviderSpec, spec: DeploymentSpec) -> GatewayError:
    names = " or ".join(spec.key_env or provider.key_env)
    return ProviderNotConfigured(
        f"The model '{model.id}' is not available: its provider {provider.name} has no API key configured. "
        f"The gateway operator can enable it by setting {names}.",
        param="model",
    )


def _unsupported(model: ModelSpec, provider: ProviderSpec) -> GatewayError:
    return UpstreamUnavailable(
        f"The model '{model.id}' is not served yet: this gateway version has no adapter for the "
        f"'{provider.wire}' wire format of {provider.name}.",
        code="provider_not_supported",
        param="model",
    )
