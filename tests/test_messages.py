"""aipower/messages.py: the internal model is made of frozen values; message_text joins only text parts."""

from __future__ import annotations

import dataclasses

import pytest

from aipower.messages import ChatRequest, Image, Message, Reasoning, Text, ToolCall, Usage, message_text


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((), ""),
        ((Text("a"), Text("b")), "ab"),
        ((Reasoning("thinking"), Text("answer")), "answer"),
        ((Text("see "), Image("https://x/y.png"), Text("this")), "see this"),
        ((ToolCall("c1", "f", "{}"),), ""),
    ],
)
def test_message_text_joins_only_text_parts(
    parts: tuple[Text | Image | ToolCall | Reasoning, ...], expected: str
) -> None:
    assert message_text(Message(role="assistant", parts=parts)) == expected


def test_values_are_frozen() -> None:
    message = Message(role="user", parts=(Text("hi"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.role = "assistant"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Usage(1, 2).input_tokens = 3  # type: ignore[misc]


def test_defaults() -> None:
    request = ChatRequest(model="m", messages=())
    assert (request.stream, request.include_usage, request.tools, dict(request.extra)) == (False, False, (), {})
    assert Usage(1, 2) == Usage(1, 2, cached_input_tokens=0, reasoning_tokens=0, estimated=False)
    assert ChatRequest(model="m", messages=()).extra is not request.extra  # no shared mutable default
