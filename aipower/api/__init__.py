"""HTTP surface: routes() and the one exception handler that renders the OpenAI error envelope. API layer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aipower.api.billing import get_balance, get_generation, get_usage
from aipower.api.chat import chat_completions
from aipower.api.models import get_model, list_models
from aipower.api.providers_health import providers_health
from aipower.api.responses import routes as response_routes
from aipower.errors import GatewayError

logger = logging.getLogger(__name__)


def routes() -> list[Route]:
    plain = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        *response_routes(),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/providers/health", providers_health, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/v1/balance", get_balance, methods=["GET"]),
        Route("/v1/usage", get_usage, methods=["GET"]),
        Route("/v1/generation/{generation_id}", get_generation, methods=["GET"]),
    ]
    return [Route(r.path, _answering(r.endpoint), methods=list(r.methods or ()), name=r.name) for r in plain]


Endpoint = Callable[[Request], Awaitable[Response]]


def _answering(endpoint: Endpoint) -> Endpoint:
    """The endpoint, answering an unexpected error itself. Starlette's last resort for one (app.py's
    `Exception: server_error`) answers and then re-raises, and uvicorn then drops the caller's keep-alive connection:
    an SDK's next call on it failed with a connection error. GatewayError and HTTPException go on to their handlers
    (which do not re-raise); an error after a stream began still propagates."""

    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (GatewayError, HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its traceback by server_error
            return await server_error(request, exc)

    return answered


async def health(request: Request) -> Response:
    ok = await request.app.state.api.database_ok()
    body = {"status": "ok" if ok else "unavailable", "database": "ok" if ok else "unreachable"}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")


def render_error(error: GatewayError) -> Response:
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    return Response(orjson.dumps(error.envelope()), error.status, headers, media_type="application/json")


async def gateway_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return render_error(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        kind, code = "invalid_request_error", "method_not_allowed"
    else:
        message = f"Unknown request URL: {request.method} {request.url.path}."
        kind, code = "invalid_request_error", "unknown_url"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(orjson.dumps(body), exc.status_code, media_type="application/json")


async def server_error(_request: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    body = {
        "error": {"message": "The gateway hit an internal error.", "type": "server_error", "param": None, "code": None}
    }
    return Response(orjson.dumps(body), 500, media_type="application/json")
