"""GET /v1/providers/health: each deployment's breaker state, error rate and latency; operator keys only. API layer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aipower.api.context import ApiContext
from aipower.catalog import Target
from aipower.errors import PermissionDenied
from aipower.gateway.protocols import DeploymentHealth


async def providers_health(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await ctx.auth.caller(request)
    if caller.key_id not in ctx.operator_key_ids:
        raise PermissionDenied(
            "Only operator keys may read provider health (the operator lists their key ids in "
            "AIPOWER_OPERATOR_KEY_IDS).",
            code="operator_only",
        )
    rows = await ctx.router.report() if ctx.router is not None else []
    body = {"object": "list", "data": [_row(target, health) for target, health in rows]}
    return Response(orjson.dumps(body), media_type="application/json")


def _row(target: Target, health: DeploymentHealth) -> dict[str, Any]:
    return {
        "deployment": target.deployment,
        "model": target.model.id,
        "provider": target.provider.id,
        "upstream_model": target.model.upstream,
        "weight": target.weight,
        "state": health.state,
        "consecutive_failures": health.consecutive_failures,
        "calls": health.calls,
        "failures": health.failures,
        "error_rate": round(health.error_rate, 4),
        "ttft_ms": None if health.ttft_ms is None else round(health.ttft_ms, 1),
        "tokens_per_s": None if health.tokens_per_s is None else round(health.tokens_per_s, 1),
        "retry_in_seconds": None if health.retry_in is None else round(health.retry_in, 1),
    }
