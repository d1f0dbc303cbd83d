"""Gemini request bodies: the internal ChatRequest -> generateContent JSON. Providers layer.

Body: https://ai.google.dev/api/generate-content#request-body ; contents and parts: https://ai.google.dev/api/caching#Content
generationConfig: https://ai.google.dev/api/generate-content#generationconfig .
The field-by-field table (what is translated, emulated, rejected or ignored) is docs/providers/gemini.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, assert_never
from urllib.parse import urlsplit

import orjson

from aipower.errors import InvalidRequest
from aipower.messages import ChatRequest, Image, Message, Reasoning, Text, ToolCall, ToolChoice
from aipower.providers.gemini.response import generated_call_id

Json = dict[str, Any]

# reasoning_effort -> thinkingConfig.thinkingBudget, as Google's own OpenAI-compatible endpoint maps it
# (https://ai.google.dev/gemini-api/docs/openai#thinking): low 1K, medium 8K, high 24K, none disables thinking.
# "minimal" is ours: 512 is the smallest budget every Gemini 2.5 model accepts
# (https://ai.google.dev/gemini-api/docs/thinking#set-budget).
THINKING_BUDGETS: Mapping[str, int] = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

# Extra fields that change nothing Gemini could do differently, accepted without effect (see the docs table).
_IGNORED_EXTRA: Mapping[str, object] = {
    "metadata": None,
    "parallel_tool_calls": True,
    "logprobs": False,
    # OpenAI hints that leave the answer as it is (Codex-style clients send prompt_cache_key on every call)
    "prompt_cache_key": None,
    "prompt_cache_retention": None,
    "safety_identifier": None,
}
_DEFAULT_TIERS = ("auto", "default")  # service_tier values that ask for nothing

# fileData needs a MIME type; a URL's extension is the only hint a pure translation has.
_IMAGE_TYPES: Mapping[str, str] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
}


def build_body(request: ChatRequest) -> Json:
    """The generateContent body (the same body serves streamGenerateContent)."""
    body: Json = {"contents": _contents(request.messages)}
    system = _system_parts(request.messages)
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [
            {"functionDeclarations": [_declaration(t.name, t.description, t.parameters_schema) for t in request.tools]}
        ]
    if request.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


def _system_parts(messages: Sequence[Message]) -> list[Json]:
    """Every system and developer message, wherever it stands, in order: Gemini has one systemInstruction."""
    parts: list[Json] = []
    for position, message in enumerate(messages):
        if message.role not in ("system", "developer"):
            continue
        for part in message.parts:
            if not isinstance(part, Text):
                raise _invalid(f"messages[{position}].content", "Gemini system instructions take text only.")
            if part.text:
                parts.append({"text": part.text})
    return parts


def _contents(messages: Sequence[Message]) -> list[Json]:
    names: dict[str, str] = {}  # tool call id -> function name; a later call with the same id wins
    turns: list[Json] = []
    for position, message in enumerate(messages):
        match message.role:
            case "system" | "developer":
                continue
            case "user":
                role, parts = "user", _user_parts(message, position)
            case "assistant":
                role, parts = "model", _model_parts(message, position)
                names.update((p.id, p.name) for p in message.parts if isinstance(p, ToolCall))
            case "tool":
                role, parts = "user", [_function_response(message, position, names)]
            case _:
                assert_never(message.role)
        if not parts:
            continue
        if turns and turns[-1]["role"] == role:  # Gemini wants user/model turns to alternate
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": role, "parts": parts})
    return turns


def _user_parts(message: Message, position: int) -> list[Json]:
    parts: list[Json] = []
    for part in message.parts:
        match part:
            case Text(text=text):
                if text:  # Gemini rejects empty text parts
                    parts.append({"text": text})
            case Image(url=url):
                parts.append(image_part(url, f"messages[{position}].content"))
            case ToolCall() | Reasoning():
                raise _invalid(
                    f"messages[{position}].content", "Only assistant messages carry tool calls or reasoning."
                )
            case _:
                assert_never(part)
    return parts


def _model_parts(message: Message, position: int) -> list[Json]:
    """A model turn; a signature-only Reasoning part signs the part after it (thoughtSignature)."""
    parts: list[Json] = []
    pending: str | None = None
    calls = 0
    for part in message.parts:
        match part:
            case Reasoning(text=text, signature=signature):
                if pending is not None:
                    parts.append({"text": "", "thoughtSignature": pending})
                    pending = None
                if text:
                    parts.append(_signed({"text": text, "thought": True}, signature))
                else:
                    pending = signature
            case Text(text=text):
                if text or pending is not None:
                    parts.append(_signed({"text": text}, pending))
                    pending = None
            case ToolCall(id=call_id, name=name):
                args = _arguments(part, f"messages[{position}].tool_calls[{calls}].function.arguments")
                call = _with_id({"name": name, "args": args}, call_id)
                parts.append(_signed({"functionCall": call}, pending))
                pending, calls = None, calls + 1
            case Image():
                raise _invalid(f"messages[{position}].content", "Gemini model turns cannot contain images.")
            case _:
                assert_never(part)
    if pending is not None:
        parts.append({"text": "", "thoughtSignature": pending})
    return parts


def _with_id(call: Json, call_id: str | None) -> Json:
    """Gemini 3 gives calls an id and matches the functionResponse by it
    (https://ai.google.dev/api/caching#FunctionCall); ids the gateway made up are never Gemini's, so they stay out."""
    if call_id and not generated_call_id(call_id):
        call["id"] = call_id
    return call


def _signed(part: Json, signature: str | None) -> Json:
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _arguments(call: ToolCall, param: str) -> Json:
    if not call.arguments_json.strip():
        return {}
    try:
        args = orjson.loads(call.arguments_json)
    except orjson.JSONDecodeError:
        raise _invalid(param, "Tool call arguments must be valid JSON for Gemini.") from None
    if not isinstance(args, dict):
        raise _invalid(param, "Tool call arguments must be a JSON object for Gemini.")
    return args


def _function_response(message: Message, position: int, names: Mapping[str, str]) -> Json:
    """https://ai.google.dev/api/caching#FunctionResponse: a JSON object result as-is, anything else as result."""
    if any(not isinstance(p, Text) for p in message.parts):
        raise _invalid(f"messages[{position}].content", "Gemini tool results take text only.")
    name = names.get(message.tool_call_id or "") or message.name
    if name is None:
        raise _invalid(f"messages[{position}].tool_call_id", "No earlier assistant tool call has this id.")
    text = "".join(p.text for p in message.parts if isinstance(p, Text))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    response = value if isinstance(value, dict) else {"result": text}
    return {"functionResponse": _with_id({"name": name, "response": response}, message.tool_call_id)}


def image_part(url: str, param: str) -> Json:
    """data: URLs become inlineData; http(s) URLs become fileData with a MIME type guessed from the extension."""
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        mime, *params = header.split(";")
        if not comma or not mime or params[-1:] != ["base64"]:
            raise _invalid(param, "Image data URLs must look like data:<mime>;base64,<data>.")
        return {"inlineData": {"mimeType": mime, "data": data}}
    parsed = urlsplit(url)
    if parsed.scheme not in ("https", "http"):
        raise _invalid(param, "Image URLs must be https:// or data: URLs.")
    suffix = parsed.path[parsed.path.rfind(".") :].lower() if "." in parsed.path else ""
    return {"fileData": {"mimeType": _IMAGE_TYPES.get(suffix, "image/jpeg"), "fileUri": url}}


def _declaration(name: str, description: str | None, schema: Mapping[str, Any] | None) -> Json:
    # parametersJsonSchema takes full JSON Schema, so nothing is stripped to fit the OpenAPI subset of `parameters`
    # (https://ai.google.dev/api/caching#FunctionDeclaration).
    declaration: Json = {"name": name}
    if description is not None:
        declaration["description"] = description
    if schema is not None:
        declaration["parametersJsonSchema"] = schema
    return declaration


def _calling_config(choice: ToolChoice) -> Json:
    """https://ai.google.dev/api/caching#FunctionCallingConfig"""
    match choice:
        case "auto":
            return {"mode": "AUTO"}
        case "none":
            return {"mode": "NONE"}
        case "required":
            return {"mode": "ANY"}
        case _:
            return {"mode": "ANY", "allowedFunctionNames": [choice]}


def _generation_config(request: ChatRequest) -> Json:
    config: Json = {}
    for field, key in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("n", "candidateCount"),
        ("max_tokens", "maxOutputTokens"),
    ):
        value = getattr(request, field)
        if value is not None:
            config[key] = value
    if request.stop is not None:
        config["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.json_schema is not None:
            config["responseJsonSchema"] = fmt.json_schema
    _apply_extra(request.extra, config)
    return config


def _apply_extra(extra: Mapping[str, Any], config: Json) -> None:
    for key, value in extra.items():
        if key == "reasoning_effort":
            config["thinkingConfig"] = _thinking(value)
        elif key == "presence_penalty":
            config["presencePenalty"] = value
        elif key == "frequency_penalty":
            config["frequencyPenalty"] = value
        elif (key in _IGNORED_EXTRA and _IGNORED_EXTRA[key] in (None, value)) or (
            key == "service_tier" and value in _DEFAULT_TIERS
        ):
            continue
        else:
            message = f"`{key}`{_value_note(key, value)} is not supported for Gemini models."
            raise _invalid(key, message, code="unsupported_parameter")


def _value_note(key: str, value: object) -> str:
    return f"={orjson.dumps(value).decode()}" if key in _IGNORED_EXTRA else ""


def _thinking(effort: object) -> Json:
    budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise _invalid("reasoning_effort", f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}.")
    return {"thinkingBudget": 0} if budget == 0 else {"thinkingBudget": budget, "includeThoughts": True}


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)
