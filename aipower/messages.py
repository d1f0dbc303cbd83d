"""THE internal message model every inbound and outbound wire translates to and from. Kernel layer.

Frozen, slotted values with no I/O. The vocabulary follows Chat Completions, so the common path is nearly
an identity mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
ToolChoice = Literal["auto", "none", "required"] | str  # a str other than the three names a function


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    url: str  # https URL or data: URI
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str
    signature: str | None = None  # opaque provider data, echoed back on the next turn
    redacted: bool = False  # encrypted reasoning (Anthropic redacted_thinking): no text, the data is `signature`
    origin: str | None = None  # the model id that made the signature, when known: see for_model()


Part = Text | Image | ToolCall | Reasoning


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[Part, ...]
    tool_call_id: str | None = None
    name: str | None = None
    content_was_text: bool = True  # caller sent `content` as a plain string (kept for faithful re-rendering)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters_schema: Mapping[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    json_schema: Mapping[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    n: int | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    fallback_models: tuple[str, ...] = ()  # the body's `models` (OpenRouter's): tried in order after `model`
    # OpenAI fields we don't interpret: forwarded verbatim to openai-wire upstreams.
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    message: Message
    finish_reason: FinishReason | None
    logprobs: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ChatResponse:
    choices: tuple[Choice, ...]
    usage: Usage | None
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    index: int
    text: str
    signature: str | None = None
    redacted: bool = False  # as Reasoning.redacted


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    call_index: int
    id: str | None
    name: str | None
    arguments_fragment: str


@dataclass(frozen=True, slots=True)
class Finish:
    index: int
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class UsageReport:
    usage: Usage
    cost_nanos: int | None = None  # what the caller is charged, filled in by the gateway


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finish | UsageReport


def message_text(message: Message) -> str:
    """The concatenated text parts of a message."""
    return "".join(part.text for part in message.parts if isinstance(part, Text))


def for_model(request: ChatRequest, model_id: str) -> ChatRequest:
    """The request as `model_id` receives it: reasoning another model signed (its `origin`) keeps its text but not the
    signature, which only the model that made it accepts, and goes when the signature was all it had."""
    if not any(isinstance(p, Reasoning) and _foreign(p, model_id) for m in request.messages for p in m.parts):
        return request
    return replace(request, messages=tuple(replace(m, parts=_parts_for(m.parts, model_id)) for m in request.messages))


def _parts_for(parts: tuple[Part, ...], model_id: str) -> tuple[Part, ...]:
    kept: list[Part] = []
    for part in parts:
        if not isinstance(part, Reasoning) or not _foreign(part, model_id):
            kept.append(part)
        elif part.text and not part.redacted:
            kept.append(Reasoning(part.text))
    return tuple(kept)


def _foreign(part: Reasoning, model_id: str) -> bool:
    return part.signature is not None and part.origin is not None and part.origin != model_id
