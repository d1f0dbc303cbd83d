"""GET /v1/models and /v1/models/{id}: the catalog with prices and the smart route ids, rendered once. API layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aipower.catalog import Catalog, ModelSpec, RouteSpec
from aipower.errors import ModelNotFound
from aipower.money import format_usd


class ModelList:
    """The /v1/models bodies, encoded at startup: the catalog does not change while the process runs."""

    def __init__(self, catalog: Catalog, available: Mapping[str, bool]) -> None:
        entries = [_model(m, available.get(m.id, False)) for m in catalog.models.values()]
        entries += [_route(r, catalog) for r in catalog.routes.values()]
        self.list_body = orjson.dumps({"object": "list", "data": entries})
        self.one_body = {str(e["id"]): orjson.dumps(e) for e in entries}


def _model(model: ModelSpec, available: bool) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.provider,
        "name": model.name,
        "context_length": model.context,
        "max_output_tokens": model.max_output,
        "pricing": {
            "input": format_usd(model.price.input),
            "output": format_usd(model.price.output),
            "unit": "USD per 1M tokens",
        },
        "capabilities": sorted(model.capabilities),
        "free_tier": model.free,
        "available": available,
        "smart_route": False,
    }


def _route(route: RouteSpec, catalog: Catalog) -> dict[str, Any]:
    return {
        "id": route.id,
        "object": "model",
        "created": max(catalog.models[c].created for c in route.candidates),
        "owned_by": "aipower",
        "name": route.description,
        "smart_route": True,
        "strategy": route.strategy,
        "candidates": list(route.candidates),
    }


async def list_models(request: Request) -> Response:
    ctx = request.app.state.api
    await ctx.auth.caller(request)
    return Response(ctx.models.list_body, media_type="application/json")


async def get_model(request: Request) -> Response:
    ctx = request.app.state.api
    await ctx.auth.caller(request)
    model_id = request.path_params["model_id"]
    body = ctx.models.one_body.get(model_id)
    if body is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist. GET /v1/models lists the available model ids.")
    return Response(body, media_type="application/json")
