"""What a stream produced so far: the reported usage, or enough to estimate it. Pure. Domain layer."""

from __future__ import annotations

from aipower.gateway import tokens
from aipower.messages import (
    ChatRequest,
    Finish,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)


class StreamMeter:
    __slots__ = ("_chars", "_reported")

    def __init__(self) -> None:
        self._chars = 0
        self._reported: Usage | None = None

    def see(self, event: StreamEvent) -> StreamEvent:
        match event:
            case TextDelta(text=text) | ReasoningDelta(text=text):
                self._chars += len(text)
            case ToolCallDelta(arguments_fragment=fragment, name=name):
                self._chars += len(fragment) + len(name or "")
            case UsageReport(usage=usage):
                self._reported = usage
            case Finish():
                pass
        return event

    @property
    def reported(self) -> bool:
        return self._reported is not None

    def usage(self, request: ChatRequest) -> Usage:
        """The upstream's usage if it reported one, else an estimate (marked estimated)."""
        if self._reported is not None:
            return self._reported
        return Usage(tokens.estimate_prompt(request), tokens.estimate_chars(self._chars), estimated=True)
