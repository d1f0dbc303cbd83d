"""aipower/providers/stream_fold.py: a stream's events add up to the answer they stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aipower.messages import (
    ChatResponse,
    Choice,
    Finish,
    Message,
    Reasoning,
    ReasoningDelta,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from aipower.providers.stream_fold import fold


async def _events(*events: StreamEvent) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


async def test_text_reasoning_calls_and_usage_fold_into_one_answer_per_choice() -> None:
    answer = await fold(
        _events(
            ReasoningDelta(0, "Think"),
            ReasoningDelta(1, "Other"),
            ReasoningDelta(0, "ing."),
            TextDelta(0, "Let me"),
            TextDelta(0, " look."),
            ToolCallDelta(0, 0, "call_a", "weather", ""),
            ToolCallDelta(0, 1, "call_b", "time", '{"tz":'),
            ToolCallDelta(0, 0, None, None, '{"city":"Paris"}'),
            ToolCallDelta(0, 1, None, None, '"UTC"}'),
            TextDelta(1, "Hi"),
            Finish(0, "tool_calls"),
            Finish(1, "stop"),
            UsageReport(Usage(10, 20, 0, 5)),
        )
    )

    calls = (ToolCall("call_a", "weather", '{"city":"Paris"}'), ToolCall("call_b", "time", '{"tz":"UTC"}'))
    assert answer == ChatResponse(
        choices=(
            Choice(0, Message("assistant", (Reasoning("Thinking."), Text("Let me look."), *calls)), "tool_calls"),
            Choice(1, Message("assistant", (Reasoning("Other"), Text("Hi"))), "stop"),
        ),
        usage=Usage(10, 20, 0, 5),
    )
