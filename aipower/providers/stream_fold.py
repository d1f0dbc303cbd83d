"""A provider's stream folded back into one answer, for models that only think when streamed. Providers layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import assert_never

from aipower.messages import (
    ChatResponse,
    Choice,
    Finish,
    FinishReason,
    Message,
    Part,
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


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    reasoning: list[str] = field(default_factory=list)
    signature: str | None = None
    text: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish: FinishReason | None = None

    def message(self) -> Message:
        parts: list[Part] = []
        if self.reasoning or self.signature:
            parts.append(Reasoning("".join(self.reasoning), self.signature))
        if self.text:
            parts.append(Text("".join(self.text)))
        parts += [ToolCall(c.id, c.name, "".join(c.arguments)) for _, c in sorted(self.calls.items())]
        return Message("assistant", tuple(parts))


async def fold(events: AsyncIterator[StreamEvent]) -> ChatResponse:
    """The answer the stream's events add up to (an UpstreamError the stream raises passes through)."""
    choices: dict[int, _Choice] = {}
    usage: Usage | None = None
    async for event in events:
        match event:
            case TextDelta(index=index, text=text):
                choices.setdefault(index, _Choice()).text.append(text)
            case ReasoningDelta(index=index, text=text, signature=signature):
                choice = choices.setdefault(index, _Choice())
                choice.reasoning.append(text)
                choice.signature = signature or choice.signature
            case ToolCallDelta(index=index, call_index=n, id=call_id, name=name, arguments_fragment=fragment):
                call = choices.setdefault(index, _Choice()).calls.setdefault(n, _Call())
                call.id, call.name = call_id or call.id, name or call.name
                call.arguments.append(fragment)
            case Finish(index=index, reason=reason):
                choices.setdefault(index, _Choice()).finish = reason
            case UsageReport(usage=reported):
                usage = reported
            case _:
                assert_never(event)
    folded = tuple(Choice(i, c.message(), c.finish) for i, c in sorted(choices.items()))
    return ChatResponse(choices=folded, usage=usage)
