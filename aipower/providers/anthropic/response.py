"""Anthropic Messages responses and errors as internal values; the field mappers the stream shares. Providers layer.

Message object: https://docs.anthropic.com/en/api/messages ; stop reasons:
https://docs.anthropic.com/en/api/handling-stop-reasons ; errors: https://docs.anthropic.com/en/api/errors
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aipower.catalog import ProviderSpec
from aipower.errors import UpstreamError
from aipower.messages import ChatResponse, Choice, FinishReason, Message, Part, Reasoning, Text, ToolCall, Usage
from aipower.providers.anthropic.request import JSON_TOOL
from aipower.providers.base import classify

Json = dict[str, Any]

_FINISH: Mapping[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # only server tools pause, and the gateway sends none
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error types carry their HTTP status, so an `error` event mid-stream is classified like an HTTP error.
_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def parse_message(data: Json) -> ChatResponse:
    """The internal response for a `message` object (raises KeyError/TypeError when it is not one)."""
    parts = tuple(part for block in data["content"] if (part := block_part(block)) is not None)
    json_answer = any(block.get("name") == JSON_TOOL for block in data["content"] if block.get("type") == "tool_use")
    finish = finish_reason(data.get("stop_reason"), json_answer)
    message = Message(role="assistant", parts=parts)
    return ChatResponse(choices=(Choice(0, message, finish),), usage=usage(data["usage"]))


def block_part(block: Json) -> Part | None:
    """A content block as a part; block types the gateway never asks for (server tools) have none."""
    match block.get("type"):
        case "text":
            return Text(block["text"])
        case "thinking":
            return Reasoning(block.get("thinking") or "", block.get("signature") or None)
        case "redacted_thinking":
            return Reasoning("", block["data"], redacted=True)
        case "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if block["name"] == JSON_TOOL:
                return Text(arguments)  # the emulated response_format: the tool input is the answer
            return ToolCall(block["id"], block["name"], arguments)
        case _:
            return None


def finish_reason(stop_reason: object, json_answer: bool) -> FinishReason | None:
    if stop_reason is None:
        return None
    reason = _FINISH.get(str(stop_reason), "stop")
    return "stop" if reason == "tool_calls" and json_answer else reason


def usage(data: Mapping[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from input_tokens; the prompt is all three."""
    read = data.get("cache_read_input_tokens") or 0
    written = data.get("cache_creation_input_tokens") or 0
    return Usage((data.get("input_tokens") or 0) + read + written, data.get("output_tokens") or 0, read)


def error_from_body(provider: ProviderSpec, status: int, body: bytes, retry_after: int | None) -> UpstreamError:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    reason = error_reason(data) or (body[:200].decode("utf-8", "replace") if body else "no details given")
    return classify(provider, status, reason, retry_after)


def error_from_event(provider: ProviderSpec, data: Json) -> UpstreamError:
    """An `error` event that arrives after HTTP 200, classified by its error type's documented status."""
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    status = _ERROR_STATUS.get(str(kind), 500)
    return classify(provider, status, error_reason(data) or "error event in stream", None)


def error_reason(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    return str(message) if message else None
