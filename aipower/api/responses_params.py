"""The field at fault in a Responses error, named as the caller sent it. API layer.

Adapters see the internal request and name chat fields (`messages[3].tool_calls[0].function.arguments`); a
Responses caller sent `input[2].arguments`, `instructions`, or an item replayed from `previous_response_id`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aipower.api.responses_wire import (
    AssistantMessageIn,
    FunctionCallIn,
    FunctionCallOutputIn,
    Item,
    ReasoningItemIn,
    ResponsesRequestIn,
)

_RENAMED = {
    "reasoning_effort": "reasoning.effort",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "verbosity": "text.verbosity",
}
_MESSAGE = re.compile(r"messages\[(\d+)\](?:\.tool_calls\[(\d+)\])?(?:\.(.+))?")
_TOOL = re.compile(r"(tools\[\d+\])\.function\.(.+)")
_CALL_FIELDS = {"function.arguments": "arguments", "function.name": "name", "id": "call_id"}


def caller_param(param: str | None, parsed: ResponsesRequestIn, items: Sequence[Item], first_new: int) -> str | None:
    """`param` as the caller knows it; `items` are the history and this input as build_chat got them."""
    if param is None or param in _RENAMED:
        return _RENAMED.get(param or "", param)
    if param.startswith("response_format.json_schema."):
        return "text.format." + param.removeprefix("response_format.json_schema.")
    if tool := _TOOL.fullmatch(param):
        return f"{tool[1]}.{tool[2]}"
    message = _MESSAGE.fullmatch(param)
    if message is None:
        return param
    position = int(message[1]) - (parsed.instructions is not None)
    if position < 0:
        return "instructions"
    index = _item_index(items, position, None if message[2] is None else int(message[2]))
    if index is None:
        return "input"
    if index < first_new:
        return "previous_response_id"
    if isinstance(parsed.input, str):
        return "input"
    field = _field(items[index], message[3], message[2] is not None)
    return f"input[{index - first_new}]" + (f".{field}" if field else "")


def _item_index(items: Sequence[Item], position: int, call: int | None) -> int | None:
    """The item that became chat message `position` (its `call`-th tool call, if given), grouped as to_messages
    groups them: each caller-side item is a message, consecutive assistant-side items share one."""
    current, calls, after_assistant = -1, 0, False
    for index, item in enumerate(items):
        assistant = isinstance(item, AssistantMessageIn | FunctionCallIn | ReasoningItemIn)
        if not (assistant and after_assistant):
            current, calls = current + 1, 0
        after_assistant = assistant
        if current == position and call is None:
            return index
        if current == position and isinstance(item, FunctionCallIn):
            if calls == call:
                return index
            calls += 1
        if current > position:
            return None
    return None


def _field(item: Item, rest: str | None, in_call: bool) -> str | None:
    if rest is None:
        return None
    if in_call:
        return _CALL_FIELDS.get(rest)
    if rest == "tool_call_id":
        return "call_id"
    if rest.startswith("content"):
        return ("output" if isinstance(item, FunctionCallOutputIn) else "content") + rest.removeprefix("content")
    return None
