"""Chat Completions answers (and the pieces a stream chunk shares with them) as internal values. Providers layer.

Shapes: https://platform.openai.com/docs/api-reference/chat/object ; provider variations are noted where handled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aipower.messages import Choice, FinishReason, Message, Part, Reasoning, Text, ToolCall, Usage

Json = dict[str, Any]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_FINISH: Mapping[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "sensitive": "content_filter",  # Zhipu: https://docs.bigmodel.cn/api-reference
}
# Finish reasons that mean the answer was cut by a failure, not finished: an upstream error (its HTTP status).
FAILED: Mapping[str, int] = {
    "network_error": 500,  # Zhipu: inference failed
    "insufficient_system_resource": 503,  # DeepSeek: https://api-docs.deepseek.com/api/create-chat-completion
}


class Interrupted(Exception):
    """A choice ended with one of the FAILED finish reasons."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_choice(data: Json, think_tags: bool) -> Choice:
    message = data.get("message") or {}
    return Choice(
        index=data.get("index", 0),
        message=Message(role="assistant", parts=_parts(message, think_tags)),
        finish_reason=finish_reason(data.get("finish_reason")),
        logprobs=data.get("logprobs"),
    )


def _parts(message: Json, think_tags: bool) -> tuple[Part, ...]:
    parts: list[Part] = []
    reasoning = reasoning_text(message)
    content = message.get("content")
    if think_tags and isinstance(content, str):
        inline, content = split_think(content)
        reasoning += inline
    if reasoning:
        parts.append(Reasoning(reasoning))
    if isinstance(content, str):
        parts.append(Text(content))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(ToolCall(call.get("id") or "", function.get("name") or "", arguments_text(function)))
    return tuple(parts)


def arguments_text(function: Json) -> str:
    """A tool call's arguments as JSON text; an upstream that sends them as an object gets them re-encoded."""
    arguments = function.get("arguments")
    if arguments is None or isinstance(arguments, str):
        return arguments or ""
    return orjson.dumps(arguments).decode()


def split_think(content: str) -> tuple[str, str]:
    """(reasoning, text) of content that opens with <think>...</think> (MiniMax M2); ("", content) otherwise."""
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return "", content
    end = stripped.find(THINK_CLOSE)
    if end < 0:  # cut off while thinking (finish_reason length)
        return stripped[len(THINK_OPEN) :], ""
    return stripped[len(THINK_OPEN) : end], stripped[end + len(THINK_CLOSE) :].lstrip()


def reasoning_text(message: Json) -> str:
    """Reasoning in a message or delta: `reasoning_content` (DeepSeek, Qwen, Zhipu, Moonshot, Doubao), or MiniMax's
    `reasoning_details` list (with reasoning_split, https://platform.minimax.io/docs/api-reference/text-openai-api)."""
    text = message.get("reasoning_content")
    if isinstance(text, str):
        return text
    details = message.get("reasoning_details")
    if isinstance(details, list):
        return "".join(d.get("text") or "" for d in details if isinstance(d, dict))
    return ""


def finish_reason(reason: object) -> FinishReason | None:
    """Ours for the upstream's; a reason that means failure raises Interrupted; unknown ones are `stop`."""
    if reason is None:
        return None
    if reason in FAILED:
        raise Interrupted(str(reason))
    return _FINISH.get(str(reason), "stop")


def parse_usage(data: Json | None) -> Usage | None:
    if not data:
        return None
    prompt = data.get("prompt_tokens") or 0
    cached = (data.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:  # DeepSeek's name for it, then Moonshot's (top-level cached_tokens)
        cached = data.get("prompt_cache_hit_tokens", data.get("cached_tokens", 0))
    reasoning = (data.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt, data.get("completion_tokens") or 0, cached or 0, reasoning)


# A mid-stream {"error": ...} chunk has no HTTP status of its own: the status its error names, in the words
# OpenAI (https://platform.openai.com/docs/guides/error-codes), DashScope (Throttling.*, "Requests rate limit
# exceeded"), DeepSeek and Zhipu use for it. Checked in order; nothing known is a 502.
_ERROR_WORDS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("rate_limit", "ratelimit", "rate limit", "throttl", "too_many_requests", "too many requests", "quota"), 429),
    (("overload", "unavailable", "capacity", "insufficient_system_resource"), 503),
    (("invalid_request", "invalid_parameter", "invalidparameter", "context_length", "bad_request"), 400),
)


def error_status(data: object) -> int:
    """The HTTP status an error chunk stands for: a status in it (`status`, or a 4xx/5xx `code`), else its
    `type`/`code` words (see _ERROR_WORDS), else 502."""
    error = data.get("error", data) if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return 502
    for key in ("status", "code"):
        value = error.get(key)
        if isinstance(value, (int, str)) and str(value).isdigit() and 400 <= int(value) <= 599:
            return int(value)
    words = " ".join(str(error.get(key) or "") for key in ("type", "code")).lower()
    return next((status for names, status in _ERROR_WORDS if any(n in words for n in names)), 502)


def error_message(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg")
        return str(message) if message else None
    return str(error) if error else None
