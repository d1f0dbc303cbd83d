"""Anthropic Messages server-sent events as internal StreamEvents. Providers layer.

Event flow: https://docs.anthropic.com/en/docs/build-with-claude/streaming (message_start, then per content block
content_block_start / content_block_delta* / content_block_stop, then message_delta and message_stop; ping and
unknown event types are ignored, as the page asks; `error` ends the stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from aipower.errors import UpstreamError
from aipower.messages import (
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from aipower.providers.anthropic.request import JSON_TOOL
from aipower.providers.anthropic.response import error_from_event, finish_reason, usage
from aipower.providers.base import Adapter
from aipower.sse import SseEvent

Json = dict[str, Any]
BlockKind = Literal["text", "thinking", "tool", "json", "other"]


@dataclass(slots=True)
class _Block:
    kind: BlockKind
    call_index: int = 0
    has_input: bool = False  # a tool block that sent no input fragment still needs "{}" for OpenAI clients


@dataclass(slots=True)
class _State:
    """What one stream has seen: open blocks by content index, tool call count, usage so far, the finish."""

    blocks: dict[int, _Block] = field(default_factory=dict)
    calls: int = 0
    usage: Json = field(default_factory=dict)
    json_answer: bool = False
    finish: FinishReason | None = None
    stopped: bool = False

    def see(self, data: Json) -> list[StreamEvent]:
        match data.get("type"):
            case "message_start":
                self._count((data.get("message") or {}).get("usage"))
            case "content_block_start":
                return self._start(data["index"], data["content_block"])
            case "content_block_delta":
                return self._delta(self.blocks[data["index"]], data["delta"])
            case "content_block_stop":
                return self._stop(self.blocks[data["index"]])
            case "message_delta":
                self._count(data.get("usage"))
                self.finish = finish_reason((data.get("delta") or {}).get("stop_reason"), self.json_answer)
                return [Finish(0, self.finish)] if self.finish is not None else []
            case "message_stop":
                self.stopped = True
                return [UsageReport(usage(self.usage))]
        return []  # ping, and event types added after this was written

    def failed(self, error: UpstreamError) -> UpstreamError:
        """The error, carrying the input counts message_start gave (billed as they are; the output is estimated)."""
        if "input_tokens" in self.usage:
            error.usage_so_far = usage(self.usage)
        return error

    def _count(self, reported: Json | None) -> None:
        self.usage.update({k: v for k, v in (reported or {}).items() if v is not None})

    def _start(self, index: int, block: Json) -> list[StreamEvent]:
        match block.get("type"):
            case "text":
                self.blocks[index] = _Block("text")
                return [TextDelta(0, block["text"])] if block.get("text") else []
            case "thinking":
                self.blocks[index] = _Block("thinking")
                return [ReasoningDelta(0, block["thinking"])] if block.get("thinking") else []
            case "redacted_thinking":
                self.blocks[index] = _Block("thinking")
                return [ReasoningDelta(0, "", block.get("data"), redacted=True)]
            case "tool_use" if block.get("name") == JSON_TOOL:
                self.json_answer = True
                self.blocks[index] = _Block("json")
                return []
            case "tool_use":
                # call_index counts tool_use blocks only: text or thinking blocks before them take no index.
                self.blocks[index] = _Block("tool", call_index=self.calls)
                self.calls += 1
                return [ToolCallDelta(0, self.calls - 1, block["id"], block["name"], "")]
        self.blocks[index] = _Block("other")
        return []

    def _delta(self, block: _Block, delta: Json) -> list[StreamEvent]:
        match delta.get("type"), block.kind:
            case "text_delta", _:
                return [TextDelta(0, delta["text"])] if delta["text"] else []
            case "thinking_delta", _:
                return [ReasoningDelta(0, delta["thinking"])] if delta["thinking"] else []
            case "signature_delta", _:
                return [ReasoningDelta(0, "", delta["signature"])]
            case "input_json_delta", "tool" if delta["partial_json"]:
                block.has_input = True
                return [ToolCallDelta(0, block.call_index, None, None, delta["partial_json"])]
            case "input_json_delta", "json" if delta["partial_json"]:
                block.has_input = True
                return [TextDelta(0, delta["partial_json"])]
        return []

    def _stop(self, block: _Block) -> list[StreamEvent]:
        if block.has_input:
            return []
        if block.kind == "tool":
            return [ToolCallDelta(0, block.call_index, None, None, "{}")]
        if block.kind == "json":
            return [TextDelta(0, "{}")]
        return []


async def parse_events(adapter: Adapter, events: AsyncIterator[SseEvent]) -> AsyncIterator[StreamEvent]:
    state = _State()
    async for event in events:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise adapter.unreadable("a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise adapter.unreadable("a stream event that is not a JSON object")
        if data.get("type") == "error":
            raise state.failed(error_from_event(adapter.provider, data))
        try:
            stream_events = state.see(data)
        except (KeyError, TypeError, AttributeError):
            raise adapter.unreadable(f"a malformed {data.get('type')} stream event") from None
        for stream_event in stream_events:
            yield stream_event
        if state.stopped:
            return
    if state.finish is None:
        raise state.failed(adapter.unreadable("a stream that ended before the message did"))
    yield UsageReport(usage(state.usage))
