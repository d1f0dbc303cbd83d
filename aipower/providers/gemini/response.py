"""Gemini responses and errors -> the internal model; the field mappers the stream shares. Providers layer.

GenerateContentResponse: https://ai.google.dev/api/generate-content#generatecontentresponse
finish reasons: https://ai.google.dev/api/generate-content#FinishReason
errors: https://ai.google.dev/gemini-api/docs/troubleshooting .
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from aipower.messages import ChatResponse, Choice, FinishReason, Message, Part, Reasoning, Text, ToolCall, Usage

Json = dict[str, Any]

_FINISH: Mapping[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}  # anything else (LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL, ...) ends the answer: "stop"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# Ids this gateway makes for calls Gemini sent without one: call_<16 hex>_<ordinal>, and call_<ordinal> as
# earlier versions made them. Gemini never saw them, so they are not sent back as functionCall/functionResponse ids.
_GENERATED_ID = re.compile(r"call_(?:[0-9a-f]{16}_)?[0-9]+")


class Unreadable(Exception):
    """The upstream sent JSON of a shape we cannot read; the adapter turns it into a 502."""


def response(data: object) -> ChatResponse:
    """A whole generateContent answer; no candidates and a promptFeedback.blockReason is a filtered empty answer."""
    if not isinstance(data, dict):
        raise Unreadable
    candidates = data.get("candidates") or []
    if not isinstance(candidates, list):
        raise Unreadable
    seed = call_id_seed(data)
    choices = tuple(_choice(c, position, seed) for position, c in enumerate(candidates))
    if not choices:
        if not blocked(data):
            raise Unreadable
        choices = (Choice(0, Message("assistant", ()), "content_filter"),)
    return ChatResponse(choices=choices, usage=usage(data.get("usageMetadata")))


def _choice(candidate: object, position: int, seed: str) -> Choice:
    index, raw_parts = candidate_parts(candidate, position)
    parts = tuple(parts_of(raw_parts, 0, call_id_prefix(seed, index)))
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    finish = finish_reason(_get(candidate, "finishReason"), has_calls) or ("tool_calls" if has_calls else "stop")
    return Choice(index=index, message=Message("assistant", parts), finish_reason=finish)


def candidate_parts(candidate: object, position: int) -> tuple[int, list[Any]]:
    """The candidate's index (Gemini omits it for the first) and its raw parts (absent when filtered)."""
    if not isinstance(candidate, dict):
        raise Unreadable
    content = candidate.get("content") or {}
    raw_parts = content.get("parts") or [] if isinstance(content, dict) else None
    index = candidate.get("index", position)
    if not isinstance(raw_parts, list) or not isinstance(index, int):
        raise Unreadable
    return index, raw_parts


def call_id_seed(data: Json) -> str:
    """What a response's generated call ids derive from: its responseId (unique per answer), else a random one."""
    response_id = data.get("responseId")
    return response_id if isinstance(response_id, str) and response_id else secrets.token_hex(16)


def call_id_prefix(seed: str, index: int) -> str:
    """call_<16 hex>_ for one candidate: ids Gemini 2.5 leaves out are unique across turns and candidates."""
    return f"call_{hashlib.sha256(f'{seed}/{index}'.encode()).hexdigest()[:16]}_"


def generated_call_id(call_id: str) -> bool:
    """Whether the gateway made this id up (see _GENERATED_ID) rather than Gemini or another provider."""
    return _GENERATED_ID.fullmatch(call_id) is not None


def parts_of(raw_parts: list[Any], first_call: int, id_prefix: str) -> list[Part]:
    """Parts in order. thought parts are Reasoning; a thoughtSignature on any other part becomes a
    signature-only Reasoning just before it, so the signature returns on that part next turn
    (https://ai.google.dev/gemini-api/docs/thought-signatures). Calls keep Gemini's functionCall.id, else get
    <id_prefix><ordinal in the candidate>."""
    parts: list[Part] = []
    calls = first_call
    for raw in raw_parts:
        if not isinstance(raw, dict):
            raise Unreadable
        signature = raw.get("thoughtSignature")
        text = raw.get("text")
        if raw.get("thought"):
            if text or signature:
                parts.append(Reasoning(text or "", signature))
            continue
        if signature:
            parts.append(Reasoning("", signature))
        if "functionCall" in raw:
            parts.append(_tool_call(raw["functionCall"], f"{id_prefix}{calls}"))
            calls += 1
        elif isinstance(text, str) and text:
            parts.append(Text(text))
    return parts


def _tool_call(call: object, generated_id: str) -> ToolCall:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise Unreadable
    call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else generated_id
    return ToolCall(str(call_id), call["name"], orjson.dumps(call.get("args") or {}).decode())


def finish_reason(raw: object, has_calls: bool) -> FinishReason | None:
    if raw is None:
        return None
    reason = _FINISH.get(str(raw), "stop")
    return "tool_calls" if reason == "stop" and has_calls else reason


def blocked(data: Json) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def usage(meta: object) -> Usage | None:
    """completion = candidates + thoughts (both billed as output); cached = cachedContentTokenCount."""
    if not isinstance(meta, dict):
        return None
    thoughts = _count(meta, "thoughtsTokenCount")
    return Usage(
        input_tokens=_count(meta, "promptTokenCount"),
        output_tokens=_count(meta, "candidatesTokenCount") + thoughts,
        cached_input_tokens=_count(meta, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _count(meta: Json, key: str) -> int:
    value = meta.get(key)
    return value if isinstance(value, int) else 0


def _get(data: object, key: str) -> object:
    return data.get(key) if isinstance(data, dict) else None


def error_object(data: object) -> Json | None:
    """The `error` object of an error body: {"error": {...}}, or [{"error": {...}}] as streaming calls send it."""
    if isinstance(data, list) and data:
        data = data[0]
    error = _get(data, "error")
    return error if isinstance(error, dict) else None


def error_reason(error: Json) -> str:
    message = error.get("message")
    status = error.get("status")
    text = str(message) if message else "no details given"
    return f"{text} ({status})" if isinstance(status, str) and status else text


def retry_delay(error: Json) -> int | None:
    """Seconds from a google.rpc.RetryInfo detail ("retryDelay": "22s"), rounded up."""
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            delay = str(detail.get("retryDelay", ""))
            try:
                return max(0, math.ceil(float(delay.removesuffix("s"))))
            except ValueError:
                return None
    return None


def key_rejected(error: Json) -> bool:
    """Gemini answers a bad API key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID: the operator's problem."""
    return any(isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in error.get("details") or ())
