"""Which catalog models can be served, given the provider keys and base URLs in the settings. Pure. Domain layer."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from aipower.catalog import Catalog, ModelSpec, ProviderSpec, Target
from aipower.errors import GatewayError, ProviderNotConfigured, UpstreamUnavailable
from aipower.gateway.routing import Deployments


def resolve(catalog: Catalog, provider_env: Mapping[str, str], wires: Collection[str]) -> Deployments:
    """A target for every model whose provider has a key and a known wire format; a reason for the rest."""
    targets: dict[str, Target] = {}
    unavailable: dict[str, GatewayError] = {}
    for model in catalog.models.values():
        provider = catalog.providers[model.provider]
        key = provider_key(provider, provider_env)
        if provider.wire not in wires:
            unavailable[model.id] = _unsupported(model, provider)
        elif key is None:
            unavailable[model.id] = _not_configured(model, provider)
        else:
            base_url = provider_env.get(provider.base_url_env, provider.base_url).rstrip("/")
            targets[model.id] = Target(model=model, provider=provider, base_url=base_url, api_key=key)
    return Deployments(catalog=catalog, targets=targets, unavailable=unavailable)


def provider_key(provider: ProviderSpec, provider_env: Mapping[str, str]) -> str | None:
    for name in provider.key_env:
        if provider_env.get(name):
            return provider_env[name]
    return None


def _not_configured(model: ModelSpec, provider: ProviderSpec) -> GatewayError:
    names = " or ".join(provider.key_env)
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
