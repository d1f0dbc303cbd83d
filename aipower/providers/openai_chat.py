"""OpenAI Chat Completions wire: openai, deepseek, qwen, zhipu, moonshot, doubao, minimax. Providers layer.

Request/response shapes: https://platform.openai.com/docs/api-reference/chat ; streaming chunks:
https://platform.openai.com/docs/api-reference/chat-streaming . Per-provider differences are catalog quirks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, assert_never

import orjson

from aipower.catalog import Target
from aipower.errors import UpstreamError
from aipower.messages import (
    ChatRequest,
    ChatResponse,
    Choice,
    Finish,
    FinishReason,
    Image,
    Message,
    Part,
    Reasoning,
    ReasoningDelta,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from aipower.providers.base import Adapter, UpstreamRequest, classify, retry_after_seconds
from aipower.sse import SseEvent

Json = dict[str, Any]

_FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "sensitive": "content_filter",  # Zhipu: https://docs.bigmodel.cn/api-reference
}


class OpenAIChat(Adapter):
    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        body = render_body(request, target.model.upstream, self.provider.quirks.developer_role)
        quirks = self.provider.quirks
        if request.max_tokens is not None:
            body[quirks.max_tokens_field] = request.max_tokens
        if request.stream:
            body["stream"] = True
            if quirks.stream_usage:
                body["stream_options"] = {"include_usage": True}
        for field in quirks.drop:
            body.pop(field, None)
        headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
        return UpstreamRequest(url=f"{target.base_url}/chat/completions", headers=headers, body=orjson.dumps(body))

    def parse_response(self, body: bytes) -> ChatResponse:
        try:
            data = orjson.loads(body)
            choices = tuple(_choice(c) for c in data["choices"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise self.unreadable("a response that is not a chat completion") from None
        return ChatResponse(
            choices=choices, usage=_usage(data.get("usage")), system_fingerprint=data.get("system_fingerprint")
        )

    async def parse_stream(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]:
        empty = True
        async for event in events:
            empty = False
            if event.data == "[DONE]":
                return
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise self.unreadable("a stream chunk that is not JSON") from None
            if not isinstance(chunk, dict):
                raise self.unreadable("a stream chunk that is not a JSON object")
            if "error" in chunk:
                raise self._error_from(chunk, status=502)
            for stream_event in _chunk_events(chunk):
                yield stream_event
        if empty:  # e.g. an HTML page or plain text with status 200: not one SSE event in it
            raise self.unreadable("an empty stream or one that is not server-sent events")

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        reason = _error_message(data) or (body[:200].decode("utf-8", "replace") if body else "no details given")
        return classify(self.provider, status, reason, retry_after_seconds(headers))

    def _error_from(self, chunk: Json, status: int) -> UpstreamError:
        return classify(self.provider, status, _error_message(chunk) or "error event in stream", None)


def render_body(request: ChatRequest, upstream_model: str, developer_role: bool) -> Json:
    """The Chat Completions body for a request, minus the provider-quirk fields."""
    body: Json = {"model": upstream_model, "messages": [_message(m, developer_role) for m in request.messages]}
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    for name in ("temperature", "top_p", "seed", "n", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop is not None:
        body["stop"] = list(request.stop)
    if request.response_format is not None:
        body["response_format"] = _response_format(request)
    body.update(request.extra)
    return body


def _message(message: Message, developer_role: bool) -> Json:
    role = "system" if message.role == "developer" and not developer_role else message.role
    out: Json = {"role": role}
    if message.role == "assistant":
        text = "".join(p.text for p in message.parts if isinstance(p, Text))
        calls = [_tool_call(p) for p in message.parts if isinstance(p, ToolCall)]
        # Earlier reasoning is not sent back: DeepSeek rejects reasoning_content in input messages
        # (https://api-docs.deepseek.com/guides/reasoning_model) and OpenAI chat has no such field.
        out["content"] = text if text or not calls else None
        if calls:
            out["tool_calls"] = calls
    else:
        out["content"] = _content(message)
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _content(message: Message) -> str | list[Json]:
    parts = message.parts
    if message.content_was_text and all(isinstance(p, Text) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, Text))
    return [_content_part(p) for p in parts]


def _content_part(part: Part) -> Json:
    match part:
        case Text(text=text):
            return {"type": "text", "text": text}
        case Image(url=url, detail=detail):
            image: Json = {"url": url}
            if detail is not None:
                image["detail"] = detail
            return {"type": "image_url", "image_url": image}
        case ToolCall() | Reasoning():
            raise AssertionError("tool calls and reasoning only appear on assistant messages")
        case _:
            assert_never(part)


def _tool_call(call: ToolCall) -> Json:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}


def _tool(tool: Any) -> Json:
    function: Json = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters_schema is not None:
        function["parameters"] = tool.parameters_schema
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | Json:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(request: ChatRequest) -> Json:
    fmt = request.response_format
    assert fmt is not None
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    schema: Json = {"name": fmt.name}
    for key, value in (("schema", fmt.json_schema), ("strict", fmt.strict), ("description", fmt.description)):
        if value is not None:
            schema[key] = value
    return {"type": "json_schema", "json_schema": schema}


def _choice(data: Json) -> Choice:
    message = data.get("message") or {}
    return Choice(
        index=data.get("index", 0),
        message=Message(role="assistant", parts=_parts(message)),
        finish_reason=_finish(data.get("finish_reason")),
        logprobs=data.get("logprobs"),
    )


def _parts(message: Json) -> tuple[Part, ...]:
    parts: list[Part] = []
    reasoning = message.get("reasoning_content")
    if reasoning:
        parts.append(Reasoning(reasoning))
    content = message.get("content")
    if isinstance(content, str):
        parts.append(Text(content))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(ToolCall(call.get("id", ""), function.get("name", ""), function.get("arguments") or ""))
    return tuple(parts)


def _finish(reason: object) -> FinishReason | None:
    if reason is None:
        return None
    return _FINISH.get(str(reason), "stop")


def _usage(data: Json | None) -> Usage | None:
    if not data:
        return None
    prompt = data.get("prompt_tokens") or 0
    cached = (data.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = data.get("prompt_cache_hit_tokens", 0)  # DeepSeek's name for it
    reasoning = (data.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt, data.get("completion_tokens") or 0, cached or 0, reasoning)


def _chunk_events(chunk: Json) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if reasoning:
            events.append(ReasoningDelta(index, reasoning))
        content = delta.get("content")
        if isinstance(content, str) and (content or "role" in delta):
            events.append(TextDelta(index, content))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    index,
                    call.get("index", position),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments") or "",
                )
            )
        finish = _finish(choice.get("finish_reason"))
        if finish is not None:
            events.append(Finish(index, finish))
        usage = _usage(choice.get("usage"))  # Moonshot reports usage inside the last choice
        if usage is not None:
            events.append(UsageReport(usage))
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


def _error_message(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg")
        return str(message) if message else None
    return str(error) if error else None
