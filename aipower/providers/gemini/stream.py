"""Gemini streamGenerateContent?alt=sse chunks -> internal stream events. Providers layer.

Each `data:` event is a whole GenerateContentResponse holding only the new parts
(https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent); usageMetadata repeats
and grows, so only the last one is reported, once, at the end.
"""

from __future__ import annotations

from typing import Any, assert_never

from aipower.messages import (
    Finish,
    Image,
    Reasoning,
    ReasoningDelta,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from aipower.providers.gemini.response import (
    Unreadable,
    blocked,
    call_id_prefix,
    candidate_parts,
    finish_reason,
    parts_of,
)

Json = dict[str, Any]


def chunk_events(chunk: Json, calls: dict[int, int], seed: str) -> list[StreamEvent]:
    """The events of one chunk; `calls` counts tool calls per candidate across the stream (call_index, ids), and
    `seed` (response.call_id_seed of the first chunk) makes the ids of calls Gemini sent without one."""
    candidates = chunk.get("candidates") or []
    if not isinstance(candidates, list):
        raise Unreadable
    events: list[StreamEvent] = []
    for position, candidate in enumerate(candidates):
        index, raw_parts = candidate_parts(candidate, position)
        seen = calls.get(index, 0)
        for part in parts_of(raw_parts, seen, call_id_prefix(seed, index)):
            match part:
                case Text(text=text):
                    events.append(TextDelta(index, text))
                case Reasoning(text=text, signature=signature):
                    events.append(ReasoningDelta(index, text, signature))
                case ToolCall(id=call_id, name=name, arguments_json=arguments):
                    events.append(ToolCallDelta(index, seen, call_id, name, arguments))
                    seen += 1
                case Image():
                    raise AssertionError("parts_of() never yields images")
                case _:
                    assert_never(part)
        calls[index] = seen
        finish = finish_reason(candidate.get("finishReason"), seen > 0)
        if finish is not None:
            events.append(Finish(index, finish))
    if not candidates and blocked(chunk):
        events.append(Finish(0, "content_filter"))
    return events
