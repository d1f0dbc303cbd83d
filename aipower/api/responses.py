"""POST /v1/responses, GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items. API layer.

The Responses request becomes one ChatRequest (instructions, the previous_response_id chain, this input) and goes
through the same Gateway as chat completions: billing, limits, routing and failover are the same. Answers are
stored (unless `store` is false) for GET, input_items and the next previous_response_id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aipower.api import responses_events as events
from aipower.api import responses_wire as wire
from aipower.api.auth import own_account
from aipower.api.chat import read_body
from aipower.api.context import ApiContext
from aipower.api.event_stream import EventStreamResponse
from aipower.api.responses_params import caller_param
from aipower.errors import GatewayError, InvalidRequest, ModelNotFound
from aipower.gateway.protocols import Caller, StoredResponse
from aipower.gateway.service import StreamSession
from aipower.money import usd_text


@dataclass(slots=True)
class _History:
    """A previous_response_id chain, oldest first: its items (inputs and outputs, no instructions), the model that
    produced each (None for an input), and the function calls left out because they were cut mid-stream (their
    arguments are unfinished JSON, which no provider accepts)."""

    items: list[wire.Item] = field(default_factory=list)
    origins: list[str | None] = field(default_factory=list)
    cut_calls: set[str] = field(default_factory=set)

    def add(self, items: list[wire.Item], origin: str | None) -> None:
        for item in items:
            if isinstance(item, wire.FunctionCallIn) and item.status in ("in_progress", "incomplete"):
                self.cut_calls.add(item.call_id)
            elif not (isinstance(item, wire.FunctionCallOutputIn) and item.call_id in self.cut_calls):
                self.items.append(item)
                self.origins.append(origin)

    def check(self, items: list[wire.Item]) -> None:
        """An output for a call that was cut has no call to answer: a 400 rather than the provider's."""
        sent = {item.call_id for item in items if isinstance(item, wire.FunctionCallIn)}
        for i, item in enumerate(items):
            if isinstance(item, wire.FunctionCallOutputIn) and item.call_id in self.cut_calls - sent:
                raise InvalidRequest(
                    f"The function call '{item.call_id}' of previous_response_id was cut short (its response did not "
                    "complete), so it is not replayed and cannot take an output. Send the call with this input as a "
                    "function_call item, or continue from another response.",
                    param=f"input[{i}].call_id",
                    code="invalid_value",
                )


@dataclass(frozen=True, slots=True)
class _Draft:
    """Everything about a response known before the model answers."""

    id: str
    caller: Caller
    created_at: dt.datetime
    previous_response_id: str | None
    input_items_json: bytes
    details: dict[str, Any]
    store: bool

    def record(
        self, model: str, status: str, output: events.OutputBuilder | None, error: dict[str, Any] | None
    ) -> StoredResponse:
        details = dict(self.details)
        usage = None
        if output is not None:
            details["incomplete_details"] = output.incomplete_details() if status == "incomplete" else None
            if output.usage is not None:
                usage = orjson.dumps(events.render_usage(output.usage, output.cost_nanos))
        details["error"] = error
        return StoredResponse(
            id=self.id,
            user_id=self.caller.user_id,
            key_id=self.caller.key_id,
            model=model,
            status=status,
            created_at=self.created_at,
            previous_response_id=self.previous_response_id,
            input_items_json=self.input_items_json,
            output_items_json=orjson.dumps(output.items if output is not None else []),
            usage_json=usage,
            details_json=orjson.dumps(details),
        )


def render_response(record: StoredResponse) -> dict[str, Any]:
    """The response object: the same for the POST answer, the final stream event and GET."""
    return {
        "id": record.id,
        "object": "response",
        "created_at": int(record.created_at.timestamp()),
        "status": record.status,
        "model": record.model,
        "output": orjson.Fragment(record.output_items_json),
        "usage": None if record.usage_json is None else orjson.Fragment(record.usage_json),
        **orjson.loads(record.details_json),
    }


async def create_response(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = await ctx.auth.caller(request)
    parsed = wire.parse_request(await read_body(request, ctx.max_body_bytes))
    if parsed.previous_response_id is not None:
        own_account(caller, "previous_response_id")
    history = await _history(ctx, caller, parsed.previous_response_id)
    items = wire.input_items(parsed)
    history.check(items)
    # Reasoning the caller sends back itself (store: false, or output appended to input) was made, as far as the
    # gateway can tell, by the model the caller names: its signature goes back to that model only. A route id (auto-*)
    # is no model, so such a signature goes to none (Claude then runs that tool loop without thinking).
    origins = [*history.origins, *[parsed.model] * len(items)]
    chat = wire.build_chat(parsed, history.items + items, first_new=len(history.items), origins=origins)
    store = parsed.store is not False and not caller.is_demo  # what a demo caller stores, every demo caller could read
    draft = _Draft(
        id=wire.new_id("resp"),
        caller=caller,
        created_at=dt.datetime.now(dt.UTC),
        previous_response_id=parsed.previous_response_id,
        input_items_json=orjson.dumps(events.render_input_items(items)),
        details=events.echo(parsed, store),
        store=store,
    )
    headers = {"x-request-id": draft.id}
    try:
        if chat.stream:
            session = await ctx.gateway.open_stream(caller, chat, draft.id)
            headers["x-aipower-model"] = session.model.id
            return EventStreamResponse(_stream(ctx, draft, session), headers, session.close)
        completion = await ctx.gateway.complete(caller, chat, draft.id)
    except InvalidRequest as exc:
        exc.param = caller_param(exc.param, parsed, history.items + items, len(history.items))
        raise
    choice = completion.response.choices[0]
    output = events.replay(choice.message, choice.finish_reason)
    output.usage, output.cost_nanos = completion.usage, completion.cost_nanos
    record = draft.record(completion.model.id, output.status, output, None)
    if store:
        await ctx.responses.save(record)
    headers |= {"x-aipower-model": completion.model.id, "x-aipower-cost": usd_text(completion.cost_nanos)}
    return Response(orjson.dumps(render_response(record)), media_type="application/json", headers=headers)


async def _history(ctx: ApiContext, caller: Caller, previous_id: str | None) -> _History:
    """The previous_response_id chain. Its items keep the model that produced them: the gateway sends a reasoning
    signature only to the model that made it (another would reject it), and only it knows which model serves the new
    turn (smart routes, failover)."""
    history = _History()
    if previous_id is None:
        return history
    chain = await ctx.responses.chain(caller.user_id, previous_id)
    if not chain:
        raise _not_found(previous_id, "previous_response_id")
    for stored in chain:
        history.add(wire.parse_items(stored.input_items_json), None)
        history.add(wire.parse_items(stored.output_items_json), stored.model)
    return history


async def _stream(ctx: ApiContext, draft: _Draft, session: StreamSession) -> AsyncGenerator[bytes, None]:
    frames = events.EventFrames()
    output = events.OutputBuilder()
    model = session.model.id
    start = render_response(draft.record(model, "in_progress", None, None))
    try:
        yield frames.frame("response.created", {"response": start})
        yield frames.frame("response.in_progress", {"response": start})
        async for event in session.events:
            for kind, fields in output.feed(event):
                yield frames.frame(kind, fields)
        for kind, fields in output.close():
            yield frames.frame(kind, fields)
        record = draft.record(model, output.status, output, None)
    except GatewayError as exc:
        # After the first byte there is no status code left: the stream ends with response.failed.
        output.abandon()
        record = draft.record(model, "failed", output, _failure(exc))
    finally:
        await session.events.aclose()
    # A caller that goes away mid-stream leaves nothing stored (the generator is closed before this line), as with
    # OpenAI: a stream that is not `background` stops generating when its connection closes and its id is not found
    # afterwards; surviving a dropped connection is what background mode is for
    # (https://platform.openai.com/docs/guides/background), and this gateway refuses background: true.
    if draft.store:
        await ctx.responses.save(record)
    final = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
        record.status, "response.failed"
    )
    yield frames.frame(final, {"response": render_response(record)})


def _failure(exc: GatewayError) -> dict[str, Any]:
    """response.failed's error: `code` is one of the contract's ResponseErrorCode values (a rate limit, or else a
    server error); the gateway's own code stays readable in the message."""
    code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
    message = exc.message if exc.code in (None, code) else f"{exc.message} (code: {exc.code})"
    return {"code": code, "message": message}


async def get_response(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "stored responses")
    record = await _find(ctx, caller, request.path_params["response_id"])
    return _json(render_response(record))


async def delete_response(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "stored responses")
    response_id = request.path_params["response_id"]
    if not await ctx.responses.delete(caller.user_id, response_id):
        raise _not_found(response_id, "response_id")
    return _json({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """The list object of a response's input items; `order` (asc or desc, the default), `after` (an item id of this
    list) and `limit` (1-100, 20). A value outside those is a 400 naming the parameter."""
    ctx: ApiContext = request.app.state.api
    caller = own_account(await ctx.auth.caller(request), "stored responses")
    query = request.query_params
    order, limit = _order(query.get("order", "desc")), _limit(query.get("limit", "20"))
    record = await _find(ctx, caller, request.path_params["response_id"])
    items: list[dict[str, Any]] = orjson.loads(record.input_items_json)
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after is not None:
        items = items[_position(items, after, record.id) + 1 :]
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _order(value: str) -> str:
    if value not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid value for 'order': {value!r}. Use 'asc' or 'desc' (the default).",
            param="order",
            code="invalid_value",
        )
    return value


def _limit(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 3) or not 1 <= int(value) <= 100:
        raise InvalidRequest(
            f"Invalid value for 'limit': {value!r}. Use 1 to 100.", param="limit", code="invalid_value"
        )
    return int(value)


def _position(items: list[dict[str, Any]], after: str, response_id: str) -> int:
    """Where the `after` cursor is. An id that is not one of this response's input items is a 400 rather than an empty
    page (which reads as the end of the list) or a 404 (which reads as the response being gone): the contract documents
    no error, and the SDK's pagination only ever sends the last_id of the page before."""
    for index, item in enumerate(items):
        if item["id"] == after:
            return index
    raise InvalidRequest(
        f"Invalid value for 'after': {after!r} is not an input item of response '{response_id}'. Use an item id from "
        "this list, such as the last_id of the page before.",
        param="after",
        code="invalid_value",
    )


async def _find(ctx: ApiContext, caller: Caller, response_id: str) -> StoredResponse:
    record = await ctx.responses.find(caller.user_id, response_id)
    if record is None:
        raise _not_found(response_id, "response_id")
    return record


def _not_found(response_id: str, param: str) -> ModelNotFound:
    return ModelNotFound(
        f"No response '{response_id}' for this account (responses created with store=false are not kept).",
        code="response_not_found",
        param=param,
    )


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def routes() -> list[Route]:
    return [
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    ]
