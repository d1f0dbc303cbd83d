"""POST /v1/chat/completions: parse -> gateway -> render (JSON or SSE). API layer."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from aipower import sse
from aipower.api import openai_chat_wire as wire
from aipower.api.context import ApiContext
from aipower.api.event_stream import EventStreamResponse
from aipower.errors import GatewayError, RequestTooLarge
from aipower.messages import StreamEvent
from aipower.money import usd_text


async def chat_completions(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await ctx.auth.caller(request)
    chat = wire.parse_request(await read_body(request, ctx.max_body_bytes))
    response_id = ctx.response_ids.next()
    created = int(time.time())
    if chat.stream:
        session = await ctx.gateway.open_stream(caller, chat, response_id)
        renderer = wire.ChunkRenderer(response_id, created, session.model.id, chat.include_usage)
        headers = {"x-request-id": response_id, "x-aipower-model": session.model.id, **session.rate_headers}
        if session.route:
            headers["x-aipower-route"] = session.route
        return EventStreamResponse(_frames(renderer, session.events), headers, session.close)
    completion = await ctx.gateway.complete(caller, chat, response_id)
    return Response(
        wire.render_response(completion, response_id, created),
        media_type="application/json",
        headers={
            "x-request-id": response_id,
            "x-aipower-model": completion.model.id,
            "x-aipower-cost": usd_text(completion.cost_nanos),
            **completion.rate_headers,
            **({"x-aipower-route": completion.route} if completion.route else {}),
        },
    )


async def _frames(
    renderer: wire.ChunkRenderer, events: AsyncGenerator[StreamEvent, None]
) -> AsyncGenerator[bytes, None]:
    try:
        async for event in events:
            frame = renderer.render(event)
            if frame is not None:
                yield frame
    except GatewayError as exc:
        # After the first byte there is no status code left to use: OpenAI's convention is an error frame.
        yield sse.encode(orjson.dumps(exc.envelope()))
        return
    finally:
        await events.aclose()
    yield sse.DONE_FRAME


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is larger than this gateway's limit of {limit} bytes (AIPOWER_MAX_BODY_BYTES). "
        "Send a smaller prompt or smaller images."
    )
