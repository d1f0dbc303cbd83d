"""Responses API requests for callers: parse the body and its input items into the internal model. API layer.

Request schema: https://platform.openai.com/docs/api-reference/responses/create (validated strictly; an unknown
top-level field is a 400). Stored items (an earlier response's input and output) parse with the same models,
so a previous_response_id chain replays exactly. The response side is in responses_events.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Annotated, Any, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from aipower.api.responses_rules import check_input, check_metadata, check_tool_choice
from aipower.api.wire_errors import require_finite
from aipower.errors import InvalidRequest
from aipower.messages import ChatRequest, Image, Message, Part, Reasoning, ResponseFormat, Text, Tool, ToolCall

_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class _Item(BaseModel):
    """Items may carry fields we do not read (status, annotations, logprobs...): they come back from outputs."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _Config(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _by_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return None if kind is None else f"~{kind}"


def _by_item_type(value: Any) -> str | None:
    """An input item's type; an EasyInputMessage may leave `type` out."""
    if isinstance(value, dict) and "type" not in value and "role" in value:
        return "~message"
    return _by_type(value)


def _by_role(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return None if role is None else f"~{role}"


class InputTextIn(_Item):
    type: Literal["input_text"]
    text: str


class InputImageIn(_Item):
    type: Literal["input_image"]
    image_url: str | None = Field(default=None, min_length=1)
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None


class OutputTextIn(_Item):
    type: Literal["output_text"]
    text: str


class RefusalIn(_Item):
    type: Literal["refusal"]
    refusal: str


InputPartIn = Annotated[
    Annotated[InputTextIn, Tag("~input_text")] | Annotated[InputImageIn, Tag("~input_image")],
    Discriminator(_by_type),
]
OutputPartIn = Annotated[
    Annotated[OutputTextIn, Tag("~output_text")] | Annotated[RefusalIn, Tag("~refusal")], Discriminator(_by_type)
]


class InputMessageIn(_Item):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "system", "developer"]
    content: str | list[InputPartIn]


class AssistantMessageIn(_Item):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["assistant"]
    content: str | list[OutputPartIn]


class FunctionCallIn(_Item):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] | None = None  # incomplete: cut mid-arguments


class FunctionCallOutputIn(_Item):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[InputPartIn]


class SummaryTextIn(_Item):
    type: Literal["summary_text"]
    text: str


class ReasoningTextIn(_Item):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItemIn(_Item):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryTextIn] = Field(default_factory=list)
    content: list[ReasoningTextIn] | None = None  # None (absent) with encrypted_content: redacted reasoning
    encrypted_content: str | None = None


MessageIn = Annotated[
    Annotated[InputMessageIn, Tag("~user")]
    | Annotated[InputMessageIn, Tag("~system")]
    | Annotated[InputMessageIn, Tag("~developer")]
    | Annotated[AssistantMessageIn, Tag("~assistant")],
    Discriminator(_by_role),
]
ItemIn = Annotated[
    Annotated[MessageIn, Tag("~message")]
    | Annotated[FunctionCallIn, Tag("~function_call")]
    | Annotated[FunctionCallOutputIn, Tag("~function_call_output")]
    | Annotated[ReasoningItemIn, Tag("~reasoning")],
    Discriminator(_by_item_type),
]
Item = InputMessageIn | AssistantMessageIn | FunctionCallIn | FunctionCallOutputIn | ReasoningItemIn
_ITEMS: TypeAdapter[list[Item]] = TypeAdapter(list[ItemIn])


class FunctionToolIn(_Config):
    type: Literal["function"]
    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoiceIn(_Config):
    type: Literal["function"]
    name: str


class FormatTextIn(_Config):
    type: Literal["text"]


class FormatJsonObjectIn(_Config):
    type: Literal["json_object"]


class FormatJsonSchemaIn(_Config):
    type: Literal["json_schema"]
    name: str = Field(pattern=_NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


FormatIn = Annotated[
    Annotated[FormatTextIn, Tag("~text")]
    | Annotated[FormatJsonObjectIn, Tag("~json_object")]
    | Annotated[FormatJsonSchemaIn, Tag("~json_schema")],
    Discriminator(_by_type),
]


class TextConfigIn(_Config):
    format: FormatIn | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfigIn(_Config):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptionsIn(_Config):
    include_obfuscation: bool | None = None


# The contract's IncludeEnum. Reasoning's encrypted_content and input image URLs are always returned; the rest (hosted
# tools' results, output logprobs) name what this gateway never produces, so they are accepted and change nothing.
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]


class ResponsesRequestIn(_Config):
    model: str = Field(min_length=1)
    input: str | list[ItemIn]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionToolIn] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfigIn | None = None
    reasoning: ReasoningConfigIn | None = None
    metadata: dict[str, Any] | None = None  # limits in check_metadata, which names `metadata` for each
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    stream: bool | None = None
    stream_options: StreamOptionsIn | None = None
    user: str | None = None
    include: list[Includable] | None = None  # see Includable: nothing to switch on
    truncation: Literal["auto", "disabled"] | None = None
    # Forwarded as chat completions forwards them (ChatRequest.extra).
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None
    # Validated, then echoed: logprobs are not relayed, and max_tool_calls bounds built-in tools, which we lack.
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = None
    background: bool | None = None  # true is refused in parse_request


# Chat Completions takes these under the same names and forwards them verbatim; so does this endpoint.
_FORWARDED = ("prompt_cache_key", "prompt_cache_retention", "safety_identifier", "service_tier")


def parse_request(body: bytes) -> ResponsesRequestIn:
    """The validated request; InvalidRequest (400, with param) when it is not valid."""
    try:
        parsed = ResponsesRequestIn.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    check_input(parsed.input, parsed.previous_response_id)
    check_metadata(parsed.metadata)
    choice = parsed.tool_choice
    named = choice.name if isinstance(choice, FunctionChoiceIn) else None
    check_tool_choice(named, choice == "required", [tool.name for tool in parsed.tools or ()])
    for i, tool in enumerate(parsed.tools or ()):
        require_finite(tool.parameters, f"tools[{i}].parameters")
    if parsed.background:
        raise InvalidRequest(
            "Background responses (background: true) are not supported by this gateway; "
            "send background: false or leave it out, and stream instead.",
            param="background",
            code="unsupported_parameter",
        )
    return parsed


def parse_items(stored: bytes) -> list[Item]:
    """Items we stored earlier (input or output JSON of a response)."""
    return _ITEMS.validate_json(stored)


def input_items(parsed: ResponsesRequestIn) -> list[Item]:
    if isinstance(parsed.input, str):  # "" only comes with previous_response_id, and adds nothing (check_input)
        return [InputMessageIn(role="user", content=parsed.input)] if parsed.input else []
    return list(parsed.input)


def build_chat(
    parsed: ResponsesRequestIn, items: Sequence[Item], first_new: int, origins: Sequence[str | None] = ()
) -> ChatRequest:
    """The internal request: instructions, then every item (history first); `first_new` indexes this input, and
    `origins` names the model that produced each history item (see to_messages)."""
    system = (Message("system", (Text(parsed.instructions),)),) if parsed.instructions is not None else ()
    fmt = parsed.text.format if parsed.text else None
    tool_choice = parsed.tool_choice
    extra: dict[str, Any] = {}
    if parsed.reasoning and parsed.reasoning.effort is not None:
        extra["reasoning_effort"] = parsed.reasoning.effort
    if parsed.parallel_tool_calls is not None:
        extra["parallel_tool_calls"] = parsed.parallel_tool_calls
    if parsed.text and parsed.text.verbosity is not None:
        extra["verbosity"] = parsed.text.verbosity
    for name in _FORWARDED:
        value = getattr(parsed, name)
        if value is not None:
            extra[name] = value
    return ChatRequest(
        model=parsed.model,
        messages=system + to_messages(items, first_new, origins),
        tools=tuple(Tool(t.name, t.description, t.parameters, t.strict) for t in parsed.tools or ()),
        tool_choice=tool_choice.name if isinstance(tool_choice, FunctionChoiceIn) else tool_choice,
        max_tokens=parsed.max_output_tokens,
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        response_format=_format(fmt),
        stream=bool(parsed.stream),
        include_usage=bool(parsed.stream),  # the final event carries usage
        user=parsed.user,
        extra=extra,
    )


def _format(fmt: FormatTextIn | FormatJsonObjectIn | FormatJsonSchemaIn | None) -> ResponseFormat | None:
    match fmt:
        case None:
            return None
        case FormatJsonSchemaIn():
            return ResponseFormat("json_schema", fmt.name, fmt.schema_, fmt.strict, fmt.description)
        case FormatTextIn() | FormatJsonObjectIn():
            return ResponseFormat(fmt.type)


def to_messages(items: Sequence[Item], first_new: int = 0, origins: Sequence[str | None] = ()) -> tuple[Message, ...]:
    """Chat messages for items; consecutive assistant-side items (reasoning, message, calls) form one turn. A
    signature keeps the model that made it (`origins[i]`, for stored items) so that only that model gets it back."""
    messages: list[Message] = []
    for i, item in enumerate(items):
        param = f"input[{i - first_new}]"
        match item:
            case InputMessageIn():
                text = _plain(item.content)
                messages.append(Message(item.role, _input_parts(item.content, param), content_was_text=text))
            case FunctionCallOutputIn():
                text = _plain(item.output)
                parts = _input_parts(item.output, param, "output")
                messages.append(Message("tool", parts, tool_call_id=item.call_id, content_was_text=text))
            case AssistantMessageIn():
                _assistant(messages, _output_parts(item.content))
            case FunctionCallIn():
                _assistant(messages, (ToolCall(item.call_id, item.name, item.arguments),))
            case ReasoningItemIn():
                _assistant(messages, (_reasoning(item, origins[i] if i < len(origins) else None),))
            case _:
                assert_never(item)
    return tuple(messages)


def _plain(content: str | Sequence[InputTextIn | InputImageIn]) -> bool:
    """Plain text (a string, or the one input_text part it is stored as): sent upstream as a string."""
    return isinstance(content, str) or (len(content) == 1 and isinstance(content[0], InputTextIn))


def _assistant(messages: list[Message], parts: tuple[Part, ...]) -> None:
    if messages and messages[-1].role == "assistant":
        messages[-1] = Message("assistant", messages[-1].parts + parts, content_was_text=False)
    else:
        messages.append(Message("assistant", parts, content_was_text=len(parts) == 1 and isinstance(parts[0], Text)))


def _input_parts(
    content: str | Sequence[InputTextIn | InputImageIn], param: str, field: str = "content"
) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (Text(content),)
    parts: list[Part] = []
    for j, part in enumerate(content):
        if isinstance(part, InputTextIn):
            parts.append(Text(part.text))
        elif part.image_url is None:
            raise InvalidRequest(
                "This gateway takes images as `image_url` (an https URL or a data: URL), not `file_id`.",
                param=f"{param}.{field}[{j}].image_url",
                code="missing_required_parameter",
            )
        else:
            parts.append(Image(part.image_url, part.detail))
    return tuple(parts)


def _output_parts(content: str | Sequence[OutputTextIn | RefusalIn]) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (Text(content),)
    return tuple(Text(p.text) if isinstance(p, OutputTextIn) else Text(p.refusal) for p in content)


def _reasoning(item: ReasoningItemIn, origin: str | None) -> Reasoning:
    texts = item.content if item.content is not None else item.summary
    text = "".join(t.text for t in texts)
    redacted = item.content is None and not item.summary and item.encrypted_content is not None
    return Reasoning(text, item.encrypted_content, redacted=redacted, origin=origin)


def _invalid(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    error = max(errors, key=lambda e: len(e["loc"]))  # the deepest: `input` as a list beats "not a string"
    kind, param = error["type"], param_path(error["loc"])
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json")
    if not param:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_request_body")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = "role" if "role" in str(ctx.get("discriminator")) else "type"
        param = f"{param}.{field}"
        if kind == "union_tag_not_found":
            return InvalidRequest(
                f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        expected = str(ctx.get("expected_tags", "")).replace("~", "")
        return InvalidRequest(
            f"Invalid value for '{param}': '{str(ctx.get('tag')).lstrip('~')}'. Supported values are: {expected}.",
            param=param,
            code="invalid_value",
        )
    if param.startswith("tools[") and param.endswith(".type"):
        return InvalidRequest(
            f"Invalid value for '{param}': {error.get('input')!r}. This gateway serves `function` tools only.",
            param=param,
            code="invalid_value",
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param, code="invalid_value")


def param_path(loc: tuple[int | str, ...]) -> str:
    """`('input', 'list[...]', 0, '~message', '~user', 'content')` -> `input[0].content`."""
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif item.startswith("~") or "[" in item or item[:1].isupper() or item in {"str", "int", "float", "bool"}:
            continue
        else:
            path += f".{item}" if path else item
    return path
