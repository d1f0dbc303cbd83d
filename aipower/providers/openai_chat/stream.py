"""Chat Completions stream chunks as internal events, with the state one stream needs. Providers layer.

Chunks: https://platform.openai.com/docs/api-reference/chat-streaming . The state lives in one StreamState per
parse_stream call, so nothing is shared between streams.
"""

from __future__ import annotations

from typing import Any, Literal

from aipower.messages import Finish, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta, UsageReport
from aipower.providers.openai_chat.response import (
    THINK_CLOSE,
    THINK_OPEN,
    arguments_text,
    finish_reason,
    parse_usage,
    reasoning_text,
)

Json = dict[str, Any]


def chunk_events(chunk: Json, state: StreamState) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        index = choice.get("index", 0)
        state.started.add(index)
        delta = choice.get("delta") or {}
        reasoning = reasoning_text(delta)
        if reasoning:
            events.append(ReasoningDelta(index, reasoning))
        content = delta.get("content")
        if isinstance(content, str) and (content or "role" in delta):
            events.extend(state.text(index, content))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            events.append(state.tool_call(index, position, call))
        finish = finish_reason(choice.get("finish_reason"))
        if finish is not None:
            state.finished.add(index)
            events.extend(state.flush(index))
            events.append(Finish(index, finish))
        usage = parse_usage(choice.get("usage"))  # Moonshot reports usage inside the last choice
        if usage is not None:
            events.append(UsageReport(usage))
    usage = parse_usage(chunk.get("usage"))
    if usage is not None:
        events.append(UsageReport(usage))
    return events


class StreamState:
    """One stream's tool calls per choice and, where reasoning comes inline (think_tags), its content splitters; the
    choices that started and those that finished."""

    __slots__ = ("_calls", "_tags", "_think", "finished", "started")

    def __init__(self, think_tags: bool) -> None:
        self._tags = think_tags
        self._calls: dict[int, _ToolCalls] = {}
        self._think: dict[int, ThinkSplitter] = {}
        self.started: set[int] = set()
        self.finished: set[int] = set()

    @property
    def complete(self) -> bool:
        """Every choice that started has a finish_reason: the answer is whole (whether or not [DONE] follows)."""
        return bool(self.started) and self.started <= self.finished

    def text(self, index: int, content: str) -> list[StreamEvent]:
        if not self._tags:
            return [TextDelta(index, content)]
        return self._think.setdefault(index, ThinkSplitter(index)).feed(content)

    def tool_call(self, index: int, position: int, call: Json) -> ToolCallDelta:
        return self._calls.setdefault(index, _ToolCalls(index)).delta(position, call)

    def flush(self, index: int) -> list[StreamEvent]:
        """What one choice's splitter still holds, at its finish (a stream cut before that is an error)."""
        splitter = self._think.pop(index, None)
        return splitter.flush() if splitter is not None else []


class _ToolCalls:
    """One choice's streamed tool calls, made regular. Providers differ: Zhipu sends a whole call in one chunk,
    some omit `index`, some repeat `id` and `name` on every fragment or send them empty. Each call gets a stable
    call_index, and its id and name are passed on once: OpenAI SDKs concatenate repeated strings."""

    __slots__ = ("_by_id", "_choice", "_count", "_last", "_named", "_with_id")

    def __init__(self, choice: int) -> None:
        self._choice = choice
        self._by_id: dict[str, int] = {}
        self._with_id: set[int] = set()
        self._named: set[int] = set()
        self._count = 0  # calls seen so far
        self._last = -1  # the call the previous fragment belonged to

    def delta(self, position: int, call: Json) -> ToolCallDelta:
        call_id = call.get("id") or None
        function = call.get("function") or {}
        name = function.get("name") or None
        slot = call.get("index")
        if not isinstance(slot, int):
            slot = self._slot_without_index(call_id, position)
        self._last, self._count = slot, max(self._count, slot + 1)
        if call_id is not None:
            call_id = None if slot in self._with_id else call_id
            self._with_id.add(slot)
            self._by_id.setdefault(str(call.get("id")), slot)
        if name is not None:
            name = None if slot in self._named else name
            self._named.add(slot)
        return ToolCallDelta(self._choice, slot, call_id, name, arguments_text(function))

    def _slot_without_index(self, call_id: str | None, position: int) -> int:
        if call_id is not None:  # a known id continues its call; a new one starts the next
            return self._by_id.get(call_id, self._count)
        return self._last if self._last >= 0 else position  # no id: the fragment continues the last call


class ThinkSplitter:
    """One choice's content when reasoning comes inline as `<think>...</think>` at its start (MiniMax M2):
    reasoning up to the closing tag, text after it. A tag cut across chunks is held back until it is whole."""

    __slots__ = ("_held", "_index", "_phase")

    def __init__(self, index: int) -> None:
        self._index = index
        self._phase: Literal["start", "think", "gap", "text"] = "start"
        self._held = ""

    def feed(self, chunk: str) -> list[StreamEvent]:
        text, self._held = self._held + chunk, ""
        if self._phase == "start":
            stripped = text.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._phase, text = "think", stripped[len(THINK_OPEN) :]
            elif THINK_OPEN.startswith(stripped):  # nothing yet, or an opening tag still arriving
                self._held = text
                return []
            else:
                self._phase = "text"
        events: list[StreamEvent] = []
        if self._phase == "think":
            end = text.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_tag(text, THINK_CLOSE)
                self._held = text[len(text) - keep :]
                text = text[: len(text) - keep]
                return [ReasoningDelta(self._index, text)] if text else []
            if end:
                events.append(ReasoningDelta(self._index, text[:end]))
            self._phase, text = "gap", text[end + len(THINK_CLOSE) :]
        if self._phase == "gap":  # the blank lines between the thinking and the answer
            text = text.lstrip()
            if not text:
                return events
            self._phase = "text"
        if text:
            events.append(TextDelta(self._index, text))
        return events

    def flush(self) -> list[StreamEvent]:
        held, self._held = self._held, ""
        if not held:
            return []
        return [ReasoningDelta(self._index, held) if self._phase == "think" else TextDelta(self._index, held)]


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of `text` that could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
