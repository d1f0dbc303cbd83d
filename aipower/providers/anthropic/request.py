"""The internal ChatRequest as an Anthropic Messages request body. Providers layer.

Field by field: https://docs.anthropic.com/en/api/messages ; what is translated, emulated, rejected or ignored
(and why) is the table in docs/providers/anthropic.md, which this module follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, assert_never

import orjson

from aipower.catalog import ModelSpec
from aipower.errors import InvalidRequest
from aipower.messages import ChatRequest, Image, Message, Reasoning, ResponseFormat, Text, Tool, ToolCall

Json = dict[str, Any]

API_VERSION = "2023-06-01"  # https://docs.anthropic.com/en/api/versioning
# The forced tool that emulates response_format (json_object / json_schema); its input is the answer.
JSON_TOOL = "aipower_json_answer"
# reasoning_effort -> thinking.budget_tokens (Anthropic's minimum is 1024 and the budget counts within max_tokens):
# https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
REASONING_BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
# OpenAI fields in ChatRequest.extra that ask for nothing when they hold these values.
_NO_OPS: Mapping[str, object] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "parallel_tool_calls": True,
    "store": False,
}
# OpenAI hints that leave the answer as it is: a cache routing key and retention, and the service tier a caller
# takes by default. Ignored (Codex-style clients send prompt_cache_key on every call). safety_identifier, OpenAI's
# end-user id for abuse detection, is Anthropic's metadata.user_id (unless `user` gave one).
_HINTS: Mapping[str, object] = {
    "prompt_cache_key": None,
    "prompt_cache_retention": None,
    "service_tier": ("auto", "default"),
}


def build_body(request: ChatRequest, model: ModelSpec) -> Json:
    """The /v1/messages body; InvalidRequest (400, naming the field) for what Anthropic cannot express."""
    max_tokens = request.max_tokens or model.max_output  # required by Anthropic: the model's ceiling by default
    body: Json = {"model": model.upstream, "max_tokens": max_tokens, "messages": render_messages(request.messages)}
    system = _system(request.messages)
    if system:
        body["system"] = system
    body.update(_extras(request.extra, max_tokens))  # before _sampling: a caller's `user` wins over safety_identifier
    body.update(_sampling(request))
    body.update(_tools(request))
    if "thinking" in body and _unsigned_tool_loop(body["messages"]):
        del body["thinking"]
    if request.stream:
        body["stream"] = True
    return body


def render_messages(messages: Sequence[Message]) -> list[Json]:
    """User/assistant turns; tool results become user turns, and consecutive same-role turns are merged."""
    turns: list[Json] = []
    for i, message in enumerate(messages):
        match message.role:
            case "system" | "developer":
                continue
            case "user":
                role, blocks = "user", [_user_block(p, f"messages[{i}].content") for p in message.parts]
            case "tool":
                role, blocks = "user", [_tool_result(message, i)]
            case "assistant":
                role, blocks = "assistant", _assistant_blocks(message, i)
            case _:
                assert_never(message.role)
        content = [block for block in blocks if block is not None]
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(content)  # Anthropic requires user and assistant turns to alternate
        else:
            turns.append({"role": role, "content": content})
    return turns


def _unsigned_tool_loop(turns: Sequence[Json]) -> bool:
    """The conversation ends inside a tool loop (tool results answering an assistant tool_use turn) whose assistant
    turn does not open with signed thinking. With thinking enabled Anthropic answers that with a 400 ("a final
    `assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result`
    blocks) ... To avoid this requirement, disable thinking"): a tool loop keeps the thinking mode it started in
    (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking#extended-thinking-with-tool-use), and an
    OpenAI-wire caller never sees the signature it would need to send the block back."""
    if len(turns) < 2 or (turns[-2]["role"], turns[-1]["role"]) != ("assistant", "user"):
        return False
    assistant, results = turns[-2]["content"], turns[-1]["content"]
    return (
        any(block["type"] == "tool_result" for block in results)
        and any(block["type"] == "tool_use" for block in assistant)
        and assistant[0]["type"] not in ("thinking", "redacted_thinking")
    )


def _system(messages: Sequence[Message]) -> str:
    """Every system and developer message, wherever it stands, joined in order into the top-level `system`."""
    texts: list[str] = []
    for i, message in enumerate(messages):
        if message.role not in ("system", "developer"):
            continue
        for part in message.parts:
            if not isinstance(part, Text):
                raise InvalidRequest("Anthropic accepts only text in system messages.", param=f"messages[{i}].content")
        text = "".join(p.text for p in message.parts if isinstance(p, Text))
        if text:
            texts.append(text)
    return "\n\n".join(texts)


def _user_block(part: Text | Image | ToolCall | Reasoning, where: str) -> Json | None:
    match part:
        case Text(text=text):
            return {"type": "text", "text": text} if text else None  # Anthropic rejects empty text blocks
        case Image():
            return _image(part, where)
        case ToolCall() | Reasoning():
            raise InvalidRequest("Tool calls and reasoning belong on assistant messages.", param=where)
        case _:
            assert_never(part)


def _assistant_blocks(message: Message, i: int) -> list[Json | None]:
    blocks: list[Json | None] = []
    calls = 0
    for part in message.parts:
        match part:
            case Text(text=text):
                blocks.append({"type": "text", "text": text} if text else None)
            case ToolCall():
                blocks.append(_tool_use(part, f"messages[{i}].tool_calls[{calls}].function.arguments"))
                calls += 1
            case Reasoning():
                blocks.append(_thinking_block(part))
            case Image():
                raise InvalidRequest("Anthropic accepts images only from users.", param=f"messages[{i}].content")
            case _:
                assert_never(part)
    return blocks


def _thinking_block(part: Reasoning) -> Json | None:
    # Only signed thinking can go back (Anthropic verifies the signature); unsigned reasoning from another
    # provider or an OpenAI client's reasoning_content carries nothing Anthropic can accept, so it is left out.
    if part.signature is None:
        return None
    if part.redacted:
        return {"type": "redacted_thinking", "data": part.signature}
    return {"type": "thinking", "thinking": part.text, "signature": part.signature}


def _tool_use(call: ToolCall, where: str) -> Json:
    try:
        arguments = orjson.loads(call.arguments_json) if call.arguments_json.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "Tool call arguments must be a JSON object; these are not valid JSON.", param=where
        ) from None
    if not isinstance(arguments, dict):
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=where)
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def _tool_result(message: Message, i: int) -> Json:
    if message.tool_call_id is None:
        raise InvalidRequest("A tool message needs tool_call_id.", param=f"messages[{i}].tool_call_id")
    result: Json = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    where = f"messages[{i}].content"
    if all(isinstance(p, Text) for p in message.parts):
        text = "".join(p.text for p in message.parts if isinstance(p, Text))
        if text:
            result["content"] = text
        return result
    blocks = [_user_block(p, where) for p in message.parts]
    result["content"] = [b for b in blocks if b is not None]
    return result


def _image(image: Image, where: str) -> Json:
    # https://docs.anthropic.com/en/docs/build-with-claude/vision : base64 or url sources; `detail` has no equivalent.
    url = image.url
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if not comma or "base64" not in params or not media_type:
            raise InvalidRequest("Image data URLs must be base64: data:image/png;base64,...", param=where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("Image URLs must be https URLs or base64 data URLs.", param=where)


def _sampling(request: ChatRequest) -> Json:
    out: Json = {}
    if request.temperature is not None:
        if request.temperature > 1:  # rejected, not clamped: a silent change would alter the caller's sampling
            raise InvalidRequest(
                f"Anthropic models accept temperature from 0 to 1; got {request.temperature:g}.", param="temperature"
            )
        out["temperature"] = request.temperature
    if request.top_p is not None:
        out["top_p"] = request.top_p
    if request.stop:
        out["stop_sequences"] = list(request.stop)
    if request.n is not None and request.n != 1:
        raise InvalidRequest("Anthropic models return one choice per request; n must be 1.", param="n")
    if request.user is not None:
        out["metadata"] = {"user_id": request.user}
    # request.seed is dropped: Anthropic has no seed, and OpenAI documents seed as best effort only.
    return out


def _tools(request: ChatRequest) -> Json:
    tools = [_tool(t, i) for i, t in enumerate(request.tools)]
    choice = _tool_choice(request.tool_choice, bool(tools))
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        if tools:
            raise InvalidRequest(
                "On Anthropic models response_format is emulated with a tool and cannot be combined with tools.",
                param="response_format",
            )
        tools, choice = [_json_tool(fmt)], {"type": "tool", "name": JSON_TOOL}
    if request.extra.get("parallel_tool_calls") is False and tools:
        choice = dict(choice or {"type": "auto"})
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    out: Json = {}
    if tools:
        out["tools"] = tools
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool(tool: Tool, i: int) -> Json:
    if tool.name == JSON_TOOL:
        raise InvalidRequest(
            f"The tool name {JSON_TOOL} is reserved by the gateway.", param=f"tools[{i}].function.name"
        )
    out: Json = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = tool.parameters_schema or {"type": "object", "properties": {}}
    if tool.strict:
        out["strict"] = True
    return out


def _tool_choice(choice: str | None, has_tools: bool) -> Json | None:
    if choice is None or not has_tools:
        if choice not in (None, "auto", "none"):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return None
    match choice:
        case "auto" | "none":
            return {"type": choice}
        case "required":
            return {"type": "any"}
        case _:
            return {"type": "tool", "name": choice}


def _json_tool(fmt: ResponseFormat) -> Json:
    schema = dict(fmt.json_schema or {"type": "object"})
    if schema.get("type", "object") != "object":
        raise InvalidRequest(
            "On Anthropic models a json_schema must describe an object at its root.",
            param="response_format.json_schema.schema",
        )
    description = "Give your final answer as the input of this tool."
    if fmt.description:
        description = f"{description} {fmt.description}"
    tool: Json = {"name": JSON_TOOL, "description": description, "input_schema": schema}
    if fmt.strict:
        tool["strict"] = True
    return tool


def _extras(extra: Mapping[str, Any], max_tokens: int) -> Json:
    out: Json = {}
    for name, value in extra.items():
        if value is None or (name in _NO_OPS and value == _NO_OPS[name]) or _hint(name, value):
            continue
        if name == "safety_identifier" and isinstance(value, str):
            out["metadata"] = {"user_id": value}
        elif name == "reasoning_effort":
            thinking = _thinking(value, max_tokens)
            if thinking is not None:
                out["thinking"] = thinking
        elif name == "parallel_tool_calls" and isinstance(value, bool):
            continue  # mapped in _tools
        else:
            raise InvalidRequest(f"{name} is not supported by Anthropic models.", param=name)
    return out


def _hint(name: str, value: object) -> bool:
    if name not in _HINTS:
        return False
    values = _HINTS[name]
    return values is None or (isinstance(values, tuple) and value in values)


def _thinking(effort: object, max_tokens: int) -> Json | None:
    if effort == "none":
        return None
    budget = REASONING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise InvalidRequest(
            "reasoning_effort must be one of none, minimal, low, medium, high on Anthropic models.",
            param="reasoning_effort",
        )
    if budget >= max_tokens:
        raise InvalidRequest(
            f"reasoning_effort {effort} reserves {budget} thinking tokens, which Anthropic counts within "
            f"max_tokens; set max_tokens above {budget}.",
            param="max_tokens",
        )
    return {"type": "enabled", "budget_tokens": budget}
