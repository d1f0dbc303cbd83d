"""Chat Completions JSON for callers: parse requests into the internal model, render responses and chunks. API layer.

Request schema: https://platform.openai.com/docs/api-reference/chat/create (validated strictly, like OpenAI:
"0.7" is not a number). Fields we do not interpret are kept in ChatRequest.extra and forwarded verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, assert_never

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aipower.api.wire_errors import invalid_request, require_finite
from aipower.gateway.service import Completion
from aipower.messages import (
    ChatRequest,
    Choice,
    Finish,
    Image,
    Message,
    Part,
    Reasoning,
    ReasoningDelta,
    ResponseFormat,
    StreamEvent,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from aipower.money import usd_text


class _In(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class TextPartIn(_In):
    type: Literal["text"]
    text: str


class ImageUrlIn(_In):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePartIn(_In):
    type: Literal["image_url"]
    image_url: ImageUrlIn


ContentPartIn = Annotated[TextPartIn | ImagePartIn, Field(discriminator="type")]


class SystemMessageIn(_In):
    role: Literal["system", "developer"]
    content: str | list[TextPartIn]
    name: str | None = None


class UserMessageIn(_In):
    role: Literal["user"]
    content: str | list[ContentPartIn]
    name: str | None = None


class FunctionCallIn(_In):
    name: str
    arguments: str


class ToolCallIn(_In):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class AssistantMessageIn(_In):
    role: Literal["assistant"]
    content: str | list[TextPartIn] | None = None
    tool_calls: list[ToolCallIn] | None = None
    reasoning_content: str | None = None  # DeepSeek's convention, accepted back
    name: str | None = None


class ToolMessageIn(_In):
    role: Literal["tool"]
    content: str | list[TextPartIn]
    tool_call_id: str


MessageIn = Annotated[SystemMessageIn | UserMessageIn | AssistantMessageIn | ToolMessageIn, Field(discriminator="role")]


class FunctionDefIn(_In):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_In):
    type: Literal["function"]
    function: FunctionDefIn


class NamedFunctionIn(_In):
    name: str


class NamedToolChoiceIn(_In):
    type: Literal["function"]
    function: NamedFunctionIn


class JsonSchemaIn(_In):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class FormatTextIn(_In):
    type: Literal["text"]


class FormatJsonObjectIn(_In):
    type: Literal["json_object"]


class FormatJsonSchemaIn(_In):
    type: Literal["json_schema"]
    json_schema: JsonSchemaIn


FormatIn = Annotated[FormatTextIn | FormatJsonObjectIn | FormatJsonSchemaIn, Field(discriminator="type")]


class StreamOptionsIn(_In):
    include_usage: bool | None = None


class ChatRequestIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoiceIn | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: FormatIn | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptionsIn | None = None
    user: str | None = None
    models: list[str] | None = Field(default=None, max_length=10)  # fallback model ids, as OpenRouter takes them
    # Validated here, then forwarded verbatim through ChatRequest.extra.
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, int] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None


_PASSTHROUGH = (
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "parallel_tool_calls",
    "reasoning_effort",
    "metadata",
)


def parse_request(body: bytes) -> ChatRequest:
    """The internal request for a Chat Completions body; InvalidRequest (400, with param) when it is not valid."""
    try:
        parsed = ChatRequestIn.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    extra: dict[str, Any] = dict(parsed.model_extra or {})
    for name, value in extra.items():
        require_finite(value, name)
    for i, tool in enumerate(parsed.tools or ()):
        require_finite(tool.function.parameters, f"tools[{i}].function.parameters")
    for name in _PASSTHROUGH:
        value = getattr(parsed, name)
        if value is not None:
            extra[name] = value
    return ChatRequest(
        model=parsed.model,
        messages=tuple(_message(m) for m in parsed.messages),
        tools=tuple(_tool(t) for t in parsed.tools or ()),
        tool_choice=_tool_choice(parsed.tool_choice),
        max_tokens=parsed.max_completion_tokens or parsed.max_tokens,
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        stop=(parsed.stop,) if isinstance(parsed.stop, str) else _tuple(parsed.stop),
        seed=parsed.seed,
        response_format=_format(parsed.response_format),
        n=parsed.n,
        stream=bool(parsed.stream),
        include_usage=bool(parsed.stream_options and parsed.stream_options.include_usage),
        user=parsed.user,
        fallback_models=tuple(parsed.models or ()),
        extra=extra,
    )


def _tuple(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _message(m: SystemMessageIn | UserMessageIn | AssistantMessageIn | ToolMessageIn) -> Message:
    match m:
        case SystemMessageIn():
            return Message(m.role, _parts(m.content), name=m.name, content_was_text=isinstance(m.content, str))
        case UserMessageIn():
            return Message("user", _parts(m.content), name=m.name, content_was_text=isinstance(m.content, str))
        case ToolMessageIn():
            return Message(
                "tool", _parts(m.content), tool_call_id=m.tool_call_id, content_was_text=isinstance(m.content, str)
            )
        case AssistantMessageIn():
            parts: list[Part] = [Reasoning(m.reasoning_content)] if m.reasoning_content else []
            parts.extend(_parts(m.content) if m.content is not None else ())
            parts.extend(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
            return Message("assistant", tuple(parts), name=m.name, content_was_text=not isinstance(m.content, list))


def _parts(content: str | Sequence[TextPartIn | ImagePartIn]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (Text(content),)
    return tuple(
        Text(p.text) if isinstance(p, TextPartIn) else Image(p.image_url.url, p.image_url.detail) for p in content
    )


def _tool(t: ToolIn) -> Tool:
    f = t.function
    return Tool(name=f.name, description=f.description, parameters_schema=f.parameters, strict=f.strict)


def _tool_choice(choice: str | NamedToolChoiceIn | None) -> str | None:
    return choice.function.name if isinstance(choice, NamedToolChoiceIn) else choice


def _format(fmt: FormatTextIn | FormatJsonObjectIn | FormatJsonSchemaIn | None) -> ResponseFormat | None:
    match fmt:
        case None:
            return None
        case FormatJsonSchemaIn(json_schema=s):
            return ResponseFormat("json_schema", s.name, s.schema_, s.strict, s.description)
        case FormatTextIn() | FormatJsonObjectIn():
            return ResponseFormat(fmt.type)


def render_response(completion: Completion, response_id: str, created: int) -> bytes:
    """The chat.completion body; `usage` is always present."""
    response = completion.response
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": completion.model.id,
        "choices": [_choice(c) for c in response.choices],
        "usage": render_usage(completion.usage, completion.cost_nanos),
    }
    if response.system_fingerprint is not None:
        body["system_fingerprint"] = response.system_fingerprint
    return orjson.dumps(body)


def _choice(choice: Choice) -> dict[str, Any]:
    parts = choice.message.parts
    text = [p.text for p in parts if isinstance(p, Text)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None, "refusal": None}
    reasoning = "".join(p.text for p in parts if isinstance(p, Reasoning))
    if reasoning:
        message["reasoning_content"] = reasoning
    calls = [p for p in parts if isinstance(p, ToolCall)]
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}} for c in calls
        ]
    return {
        "index": choice.index,
        "message": message,
        "logprobs": choice.logprobs,
        "finish_reason": choice.finish_reason,
    }


def render_usage(usage: Usage, cost_nanos: int | None) -> dict[str, Any]:
    """OpenAI's usage object, plus `cost` in USD (as OpenRouter reports it), an exact decimal, never a float."""
    rendered: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
    if cost_nanos is not None:
        rendered["cost"] = orjson.Fragment(usd_text(cost_nanos).encode())
    return rendered


class ChunkRenderer:
    """chat.completion.chunk frames for one stream; the envelope is encoded once, choices per event."""

    __slots__ = ("_head", "_include_usage", "_started")

    def __init__(self, response_id: str, created: int, model_id: str, include_usage: bool) -> None:
        envelope = orjson.dumps(
            {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
        )
        self._head = b"data: " + envelope[:-1] + b',"choices":'
        self._include_usage = include_usage
        self._started: set[int] = set()

    def render(self, event: StreamEvent) -> bytes | None:
        match event:
            case TextDelta(index=i, text=text):
                return self._delta(i, {"content": text})
            case ReasoningDelta(index=i, text=text):
                # A signature-only delta (Gemini, Anthropic) has nothing this wire can show.
                return self._delta(i, {"reasoning_content": text}) if text else None
            case ToolCallDelta(index=i):
                return self._delta(i, {"tool_calls": [_tool_call_delta(event)]})
            case Finish(index=i, reason=reason):
                return self._frame([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}])
            case UsageReport(usage=usage, cost_nanos=cost):
                if not self._include_usage:
                    return None
                return self._head + b'[],"usage":' + orjson.dumps(render_usage(usage, cost)) + b"}\n\n"
            case _:
                assert_never(event)

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **delta}
        return self._frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}])

    def _frame(self, choices: list[dict[str, Any]]) -> bytes:
        return self._head + orjson.dumps(choices) + b"}\n\n"


def _tool_call_delta(event: ToolCallDelta) -> dict[str, Any]:
    call: dict[str, Any] = {"index": event.call_index}
    function: dict[str, Any] = {"arguments": event.arguments_fragment}
    if event.id is not None:
        call["id"] = event.id
        call["type"] = "function"
    if event.name is not None:
        function["name"] = event.name
    call["function"] = function
    return call
