"""Routing: a model id (or smart route id) becomes an ordered list of targets to try. Domain layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aipower.catalog import Catalog, ModelSpec, RouteSpec, Target
from aipower.errors import GatewayError, ModelNotFound, UpstreamUnavailable


@dataclass(frozen=True, slots=True)
class Deployments:
    """What the catalog can serve right now: a target per servable model, a reason per model that isn't."""

    catalog: Catalog
    targets: Mapping[str, Target]
    unavailable: Mapping[str, GatewayError]


def plan(model_id: str, deployments: Deployments) -> list[Target]:
    """Targets to try, in order; raises when the id is unknown or nothing can serve it."""
    catalog = deployments.catalog
    if model_id in catalog.models:
        target = deployments.targets.get(model_id)
        if target is None:
            raise deployments.unavailable[model_id]
        return [target]
    route = catalog.routes.get(model_id)
    if route is None:
        raise ModelNotFound(
            f"The model '{model_id}' does not exist. GET /v1/models lists the available model ids.",
            param="model",
        )
    return _route_targets(route, deployments)


def _route_targets(route: RouteSpec, deployments: Deployments) -> list[Target]:
    models = [deployments.catalog.models[c] for c in route.candidates]
    if route.strategy == "cheapest":
        models.sort(key=_price_key)
    targets = [deployments.targets[m.id] for m in models if m.id in deployments.targets]
    if not targets:
        raise UpstreamUnavailable(
            f"No model behind '{route.id}' has a configured provider. Candidates: {', '.join(route.candidates)}.",
            code="no_route_available",
            param="model",
        )
    return targets


def _price_key(model: ModelSpec) -> tuple[object, ...]:
    return (model.price.input + model.price.output, model.id)
