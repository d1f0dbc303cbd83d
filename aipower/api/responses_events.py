"""Responses API output for callers: items, usage, stream events, echoed settings, stored input. API layer.

One state machine (OutputBuilder) turns StreamEvents into output items and the documented event sequence
(https://platform.openai.com/docs/api-reference/responses-streaming); a non-streamed answer is replayed through
it as events, so both paths produce the same items. Reasoning goes in a `reasoning` item as `reasoning_text`
content; a provider signature travels as `encrypted_content` and comes back on the next turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

import orjson

from aipower.api.responses_wire import (
    AssistantMessageIn,
    FunctionCallIn,
    FunctionCallOutputIn,
    FunctionChoiceIn,
    InputMessageIn,
    InputTextIn,
    Item,
    OutputTextIn,
    ReasoningItemIn,
    RefusalIn,
    ResponsesRequestIn,
    new_id,
)
from aipower.errors import UpstreamFailed
from aipower.messages import (
    Finish,
    FinishReason,
    Image,
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
from aipower.money import usd_text

Status = Literal["completed", "incomplete", "failed"]
Event = tuple[str, dict[str, Any]]  # (type, fields) before the sequence number is added
_EMPTY_TEXT: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}


def render_usage(usage: Usage, cost_nanos: int | None) -> dict[str, Any]:
    """ResponseUsage, plus `cost` in USD as chat completions report it (an exact decimal, never a float).

    cached_tokens is the provider's count of cache reads (Anthropic cache_read_input_tokens, Gemini
    cachedContentTokenCount, prompt_tokens_details.cached_tokens). The contract requires cache_write_tokens too, but
    Usage carries no cache writes (the Anthropic adapter counts cache_creation_input_tokens into input_tokens only),
    so it is 0 until Usage and the adapters carry them."""
    rendered: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if cost_nanos is not None:
        rendered["cost"] = orjson.Fragment(usd_text(cost_nanos).encode())
    return rendered


@dataclass(slots=True)
class _Open:
    """The output item being streamed: its index, and for a reasoning item whether its text part was opened."""

    index: int
    kind: Literal["message", "reasoning", "function_call"]
    part_open: bool = False


@dataclass(slots=True)
class OutputBuilder:
    """Feed gateway events, get Responses events; `items` is the output so far."""

    items: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    cost_nanos: int | None = None
    _open: _Open | None = None
    _calls: dict[int, int] = field(default_factory=dict)  # call_index -> output index
    _parked: list[_Open] = field(default_factory=list)  # function calls still open behind a later one (parallel calls)

    @property
    def status(self) -> Status:
        return "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"

    def incomplete_details(self) -> dict[str, str] | None:
        match self.finish_reason:
            case "length":
                return {"reason": "max_output_tokens"}
            case "content_filter":
                return {"reason": "content_filter"}
            case _:
                return None

    def feed(self, event: StreamEvent) -> list[Event]:
        match event:
            case TextDelta(text=text):
                return self._text(text) if text else []
            case ReasoningDelta():
                return self._reasoning(event)
            case ToolCallDelta():
                return self._tool_call(event)
            case Finish(reason=reason):
                self.finish_reason = reason
                return []
            case UsageReport(usage=usage, cost_nanos=cost):
                self.usage, self.cost_nanos = usage, cost
                return []
            case _:
                assert_never(event)

    def close(self) -> list[Event]:
        """Finish the open item (incomplete when the answer was cut short)."""
        return self._close("incomplete" if self.status == "incomplete" else "completed")

    def abandon(self) -> None:
        """The call failed: the open items stay as they are, marked incomplete."""
        for current in self._open_items:
            self.items[current.index]["status"] = "incomplete"
        self._open, self._parked = None, []

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or self._open.kind != "message":
            events += self._close("completed")
            item: dict[str, Any] = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(self._add(item, "message"))
            item["content"].append(dict(_EMPTY_TEXT))
            events.append(("response.content_part.added", {**self._where(item), "part": dict(_EMPTY_TEXT)}))
        item = self.items[self._current.index]
        item["content"][0]["text"] += text
        events.append(("response.output_text.delta", {**self._where(item), "delta": text, "logprobs": []}))
        return events

    def _reasoning(self, event: ReasoningDelta) -> list[Event]:
        events: list[Event] = []
        current = self._open
        if event.redacted or current is None or current.kind != "reasoning" or self._signed(current):
            events += self._close("completed")
            fresh: dict[str, Any] = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            events.append(self._add({**fresh, "encrypted_content": None, "status": "in_progress"}, "reasoning"))
        current = self._current
        item: dict[str, Any] = self.items[current.index]
        if event.text:
            if not current.part_open:
                current.part_open = True
                item["content"].append({"type": "reasoning_text", "text": ""})
                part = {"type": "reasoning_text", "text": ""}
                events.append(("response.content_part.added", {**self._where(item), "part": part}))
            item["content"][0]["text"] += event.text
            events.append(("response.reasoning_text.delta", {**self._where(item), "delta": event.text}))
        if event.signature is not None:
            item["encrypted_content"] = event.signature
        if event.redacted:
            del item["content"]  # no text at all: how a redacted block is told apart on the way back
            events += self._close("completed")
        return events

    def _signed(self, current: _Open) -> bool:
        return self.items[current.index]["encrypted_content"] is not None

    def _tool_call(self, event: ToolCallDelta) -> list[Event]:
        events: list[Event] = []
        index = self._calls.get(event.call_index)
        if index is None:
            if self._open is not None and self._open.kind == "function_call":
                self._parked.append(self._open)  # its arguments may still come, interleaved with this call's
                self._open = None
            else:
                events += self._close("completed")
            call: dict[str, Any] = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": event.id or new_id("call"),
                "name": event.name or "",
                "arguments": "",
            }
            events.append(self._add(call, "function_call"))
            index = self._calls[event.call_index] = self._current.index
        elif all(open_item.index != index for open_item in self._open_items):
            raise UpstreamFailed(
                "The provider interleaved the arguments of parallel tool calls, which this stream cannot carry.",
                code="upstream_bad_response",
            )
        item = self.items[index]
        if event.name and not item["name"]:
            item["name"] = event.name
        if event.arguments_fragment:
            item["arguments"] += event.arguments_fragment
            fields = {"item_id": item["id"], "output_index": index, "delta": event.arguments_fragment}
            events.append(("response.function_call_arguments.delta", fields))
        return events

    @property
    def _open_items(self) -> list[_Open]:
        return [*self._parked, self._open] if self._open is not None else list(self._parked)

    @property
    def _current(self) -> _Open:
        assert self._open is not None
        return self._open

    def _add(self, item: dict[str, Any], kind: Literal["message", "reasoning", "function_call"]) -> Event:
        self._open = _Open(len(self.items), kind)
        self.items.append(item)
        return ("response.output_item.added", {"output_index": self._open.index, "item": _copy(item)})

    def _where(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": self._current.index, "content_index": 0}

    def _close(self, status: Literal["completed", "incomplete"]) -> list[Event]:
        """Finish the open items: parked function calls first (they come earlier in the output), then the current."""
        events: list[Event] = []
        for current in self._open_items:
            events += self._done(current, status)
        self._open, self._parked = None, []
        return events

    def _done(self, current: _Open, status: Literal["completed", "incomplete"]) -> list[Event]:
        item = self.items[current.index]
        item["status"] = status
        events: list[Event] = []
        where = {"item_id": item["id"], "output_index": current.index, "content_index": 0}
        if current.kind == "message":
            part = item["content"][0]
            events.append(("response.output_text.done", {**where, "text": part["text"], "logprobs": []}))
            events.append(("response.content_part.done", {**where, "part": _copy(part)}))
        elif current.kind == "reasoning" and current.part_open:
            part = item["content"][0]
            events.append(("response.reasoning_text.done", {**where, "text": part["text"]}))
            events.append(("response.content_part.done", {**where, "part": _copy(part)}))
        elif current.kind == "function_call":
            fields = {"item_id": item["id"], "output_index": current.index, "name": item["name"]}
            events.append(("response.function_call_arguments.done", {**fields, "arguments": item["arguments"]}))
        events.append(("response.output_item.done", {"output_index": current.index, "item": _copy(item)}))
        return events


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(orjson.dumps(value))
    return result


def replay(message: Message, finish_reason: FinishReason | None) -> OutputBuilder:
    """The output of a non-streamed answer, built by the same machine as a stream."""
    builder = OutputBuilder()
    calls = 0
    for part in message.parts:
        match part:
            case Text(text=text):
                builder.feed(TextDelta(0, text))
            case Reasoning():
                builder.feed(ReasoningDelta(0, part.text, part.signature, part.redacted))
            case ToolCall():
                builder.feed(ToolCallDelta(0, calls, part.id, part.name, part.arguments_json))
                calls += 1
            case Image():
                raise UpstreamFailed("The provider answered with an image, which /v1/responses does not relay.")
            case _:
                assert_never(part)
    if finish_reason is not None:
        builder.feed(Finish(0, finish_reason))
    builder.close()
    return builder


def render_input_items(items: Sequence[Item]) -> list[dict[str, Any]]:
    """The items as /input_items lists them: every item with an id, message content always as parts."""
    return [_render_item(item) for item in items]


def _render_item(item: Item) -> dict[str, Any]:
    match item:
        case InputMessageIn():
            content = (
                item.content if isinstance(item.content, list) else [InputTextIn(type="input_text", text=item.content)]
            )
            parts = [p.model_dump(exclude_none=True) for p in content]
            return {
                "id": item.id or new_id("msg"),
                "type": "message",
                "role": item.role,
                "content": parts,
                "status": "completed",
            }
        case AssistantMessageIn():
            texts = [item.content] if isinstance(item.content, str) else [_output_text(p) for p in item.content]
            content_out = [{"type": "output_text", "text": t, "annotations": []} for t in texts]
            return {
                "id": item.id or new_id("msg"),
                "type": "message",
                "role": "assistant",
                "content": content_out,
                "status": "completed",
            }
        case FunctionCallIn():
            body = item.model_dump()
            return {**body, "id": item.id or new_id("fc"), "status": "completed"}
        case FunctionCallOutputIn():
            output = (
                item.output if isinstance(item.output, str) else [p.model_dump(exclude_none=True) for p in item.output]
            )
            return {
                "id": item.id or new_id("fco"),
                "type": "function_call_output",
                "call_id": item.call_id,
                "output": output,
                "status": "completed",
            }
        case ReasoningItemIn():
            body = item.model_dump(exclude_none=True)
            return {**body, "id": item.id or new_id("rs")}
        case _:
            assert_never(item)


def _output_text(part: OutputTextIn | RefusalIn) -> str:
    return part.text if isinstance(part, OutputTextIn) else part.refusal


def echo(parsed: ResponsesRequestIn, store: bool) -> dict[str, Any]:
    """The request settings a response object repeats back."""
    fmt = parsed.text.format if parsed.text else None
    text: dict[str, Any] = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}
    if parsed.text and parsed.text.verbosity is not None:
        text["verbosity"] = parsed.text.verbosity
    choice = parsed.tool_choice
    reasoning = parsed.reasoning
    return {
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": parsed.instructions,
        "max_output_tokens": parsed.max_output_tokens,
        "metadata": parsed.metadata or {},
        "parallel_tool_calls": parsed.parallel_tool_calls is not False,
        "previous_response_id": parsed.previous_response_id,
        "reasoning": {"effort": reasoning.effort, "summary": reasoning.summary}
        if reasoning
        else {"effort": None, "summary": None},
        "store": store,
        "temperature": parsed.temperature,
        "text": text,
        "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoiceIn) else choice or "auto",
        "tools": [t.model_dump() for t in parsed.tools or ()],
        "top_p": parsed.top_p,
        "truncation": parsed.truncation or "disabled",
        "user": parsed.user,
        "prompt_cache_key": parsed.prompt_cache_key,
        "prompt_cache_retention": parsed.prompt_cache_retention,
        "safety_identifier": parsed.safety_identifier,
        "top_logprobs": parsed.top_logprobs,
        "max_tool_calls": parsed.max_tool_calls,
    }


class EventFrames:
    """SSE frames (`event:` and `data:` lines) with a sequence number that increases by one per event."""

    __slots__ = ("_sequence",)

    def __init__(self) -> None:
        self._sequence = 0

    def frame(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, **fields, "sequence_number": self._sequence})
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
