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
    __slots__ = ("_chars", "_known", "_reported")

    def __init__(self) -> None:
        self._chars = 0
        self._reported: Usage | None = None
        self._known: Usage | None = None  # input counts a failed stream had reported (UpstreamError.usage_so_far)

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

    def know(self, usage_so_far: Usage | None) -> None:
        """Input counts the upstream reported before the stream failed: billed instead of the prompt's estimate."""
        self._known = usage_so_far

    def usage(self, request: ChatRequest) -> Usage:
        """The upstream's usage if it reported one, else an estimate (marked estimated): of the output only when
        the input counts are known."""
        output = tokens.estimate_chars(self._chars)
        if self._reported is not None:
            return self._reported
        if self._known is not None:
            known = self._known
            return Usage(known.input_tokens, output, known.cached_input_tokens, estimated=True)
        return Usage(tokens.estimate_prompt(request), output, estimated=True)
