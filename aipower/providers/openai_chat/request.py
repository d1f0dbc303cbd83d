"""The internal ChatRequest as a Chat Completions body, with a model's quirks applied. Providers layer.

Shapes: https://platform.openai.com/docs/api-reference/chat/create . What each quirk does to every field, per
provider: docs/providers/openai-compatible.md, which this module follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never

from aipower.catalog import Quirks
from aipower.errors import InvalidRequest
from aipower.messages import ChatRequest, Image, Message, Part, Reasoning, Text, ToolCall

Json = dict[str, Any]

# OpenAI fields that ask for nothing when they hold these values: accepted (and not sent) even where rejected.
_NO_OPS: Mapping[str, object] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "parallel_tool_calls": True,
}
_TYPED = frozenset({"temperature", "top_p", "seed", "user", "n"})  # ChatRequest attributes; the rest is `extra`
EFFORTS = ("none", "minimal", "low", "medium", "high")  # OpenAI's reasoning_effort values we map


def check_request(request: ChatRequest, quirks: Quirks, model_id: str) -> None:
    """InvalidRequest (400, naming the field) for each field this model cannot honour at this provider."""
    for name in sorted(quirks.reject):  # a few names; sorted so the first one named is stable
        value = getattr(request, name) if name in _TYPED else request.extra.get(name)
        if value is not None and (name not in _NO_OPS or value != _NO_OPS[name]):
            raise InvalidRequest(f"{name} is not supported by {model_id}.", code="unsupported_parameter", param=name)
    if request.n is not None and request.n > quirks.max_n:
        most = "one choice" if quirks.max_n == 1 else f"at most {quirks.max_n} choices"
        raise InvalidRequest(f"{model_id} returns {most} per request; n was {request.n}.", param="n")
    choice = request.tool_choice
    if (
        choice is not None
        and (choice if choice in ("auto", "none", "required") else "function") not in quirks.tool_choice
    ):
        accepted = ", ".join(sorted(quirks.tool_choice))
        raise InvalidRequest(f"{model_id} accepts tool_choice {accepted} only.", param="tool_choice")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and not quirks.json_schema:
        raise InvalidRequest(
            f"{model_id} does not support response_format json_schema; use json_object and describe the schema "
            "in a message.",
            param="response_format",
        )


def apply_quirks(body: Json, quirks: Quirks, model_id: str) -> None:
    """Map reasoning_effort, then remove, drop and rename fields as the model's quirks say."""
    _apply_reasoning(body, quirks, model_id)
    if quirks.reasoning_history != "drop":
        _reasoning_history(body, quirks)
    for name in quirks.drop:
        body.pop(name, None)
    for name in quirks.reject:  # what is left of a rejected field holds a no-op value: not sent
        body.pop(name, None)
    if quirks.max_n == 1:
        body.pop("n", None)
    for old, new in quirks.rename:
        if old in body:
            body[new] = body.pop(old)


def _apply_reasoning(body: Json, quirks: Quirks, model_id: str) -> None:
    effort = body.get("reasoning_effort")
    if effort is None or quirks.reasoning == "passthrough":
        return
    del body["reasoning_effort"]
    budgets = dict(quirks.thinking_budgets)
    accepted = ("none", *budgets) if quirks.reasoning == "enable_thinking" else EFFORTS
    if effort not in accepted:
        raise _bad_effort(f"reasoning_effort must be one of {', '.join(accepted)} on {model_id}.")
    match quirks.reasoning:
        case "unsupported":
            if effort != "none":
                raise _bad_effort(f"{model_id} does not reason; reasoning_effort can only be none.")
        case "always":
            if effort == "none":
                raise _bad_effort(f"{model_id} always reasons; reasoning_effort none cannot turn it off.")
        case "enable_thinking":  # the caller's own enable_thinking / thinking_budget win
            body.setdefault("enable_thinking", effort != "none")
            if effort != "none":
                body.setdefault("thinking_budget", budgets[effort])
        case "thinking_type":  # keys of the caller's own `thinking` object win
            caller = body.get("thinking")
            kind = {"type": "disabled" if effort == "none" else "enabled"}
            body["thinking"] = {**kind, **caller} if isinstance(caller, dict) else kind
        case _:
            assert_never(quirks.reasoning)


def thinks(request: ChatRequest, quirks: Quirks) -> bool:
    """Whether an enable_thinking upstream will be asked to think (the caller's enable_thinking wins, as sent)."""
    if quirks.reasoning != "enable_thinking":
        return False
    enable = request.extra.get("enable_thinking")
    if enable is not None:
        return enable is True
    effort = request.extra.get("reasoning_effort")
    return effort is not None and effort != "none"


def _reasoning_history(body: Json, quirks: Quirks) -> None:
    """Earlier reasoning goes back only to a model that thinks on this request (none to deepseek-chat, moonshot-v1-8k
    or kimi with thinking disabled: they never asked for it); with "required", a tool-call turn without any gets ""
    (Moonshot: 400 "reasoning_content is missing in assistant tool call message")."""
    thinking = _thinking_on(body, quirks)
    for message in body["messages"]:
        if message["role"] != "assistant":
            continue
        if not thinking:
            message.pop("reasoning_content", None)
        elif quirks.reasoning_history == "required" and "tool_calls" in message:
            message.setdefault("reasoning_content", "")


def _thinking_on(body: Json, quirks: Quirks) -> bool:
    """Whether the upstream will think: the `thinking.type` sent (mapped or the caller's), else the model's knob."""
    thinking = body.get("thinking")
    kind: object = thinking.get("type") if isinstance(thinking, dict) else None
    if kind is not None:
        return kind != "disabled"
    return quirks.reasoning != "unsupported"


def _bad_effort(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_value", param="reasoning_effort")


def render_body(request: ChatRequest, upstream_model: str, quirks: Quirks) -> Json:
    """The Chat Completions body for a request, minus the provider-quirk fields."""
    body: Json = {"model": upstream_model, "messages": [_message(m, quirks) for m in request.messages]}
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


def _message(message: Message, quirks: Quirks) -> Json:
    role = "system" if message.role == "developer" and not quirks.developer_role else message.role
    out: Json = {"role": role}
    if message.role == "assistant":
        text = "".join(p.text for p in message.parts if isinstance(p, Text))
        calls = [_tool_call(p) for p in message.parts if isinstance(p, ToolCall)]
        out["content"] = text if text or not calls else None
        # Earlier reasoning goes back only where the provider wants it (reasoning_history): DeepSeek's thinking mode
        # needs a tool-call turn's reasoning_content in every later request
        # (https://api-docs.deepseek.com/guides/thinking_mode#tool-calls), Moonshot's kimi-k2.5 and Zhipu's
        # interleaved/preserved thinking take it (https://docs.z.ai/guides/capabilities/thinking-mode);
        # OpenAI chat has no such input field.
        reasoning = "".join(p.text for p in message.parts if isinstance(p, Reasoning) and not p.redacted)
        if reasoning and quirks.reasoning_history != "drop":
            out["reasoning_content"] = reasoning
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
