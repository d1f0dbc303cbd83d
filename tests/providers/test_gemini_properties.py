"""aipower/providers/gemini, by property: every valid conversation translates; what both sides express round-trips."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from aipower.catalog import Target, load
from aipower.messages import ChatRequest, Image, Message, Part, Reasoning, Text, ToolCall
from aipower.providers.gemini import Gemini

CATALOG = load()
ADAPTER = Gemini(CATALOG.providers["google"])
TARGET = Target(CATALOG.models["google/gemini-2.5-flash"], CATALOG.providers["google"], "https://g.test", "k")

texts = st.text(min_size=1, max_size=20)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
signatures = st.text(alphabet="ABCDEFabcdef0123456789+/=", min_size=4, max_size=16)
images = st.builds(
    Image,
    st.one_of(
        st.builds(lambda m, d: f"data:image/{m};base64,{d}", st.sampled_from(["png", "jpeg", "webp"]), signatures),
        st.builds(lambda p, e: f"https://img.test/{p}{e}", names, st.sampled_from([".png", ".jpg", ".gif", ""])),
    ),
)


@st.composite
def model_parts(draw: st.DrawFn) -> tuple[Part, ...]:
    """Assistant parts Gemini can express: thoughts (signed or not), signatures before the part they sign."""
    parts: list[Part] = []
    calls = 0
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["thought", "text", "call"]))
        if kind == "thought":
            parts.append(Reasoning(draw(texts), draw(st.none() | signatures)))
            continue
        if draw(st.booleans()):
            parts.append(Reasoning("", draw(signatures)))
        if kind == "text":
            parts.append(Text(draw(texts)))
        else:
            args = orjson.dumps(draw(arguments)).decode()
            # a Gemini 3 style id: sent back as functionCall.id, so it survives the round trip (made-up ids do not)
            parts.append(ToolCall(f"fc{calls}x8q2", draw(names), args))
            calls += 1
    return tuple(parts)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    messages: list[Message] = []
    for _ in range(draw(st.integers(1, 6))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant"]))
        if role in ("system", "developer"):
            messages.append(Message(role, tuple(Text(t) for t in draw(st.lists(texts, min_size=1, max_size=2)))))
        elif role == "user":
            messages.append(
                Message("user", tuple(draw(st.lists(st.builds(Text, texts) | images, min_size=1, max_size=3))))
            )
        else:
            parts = draw(model_parts())
            messages.append(Message("assistant", parts))
            for call in (p for p in parts if isinstance(p, ToolCall)):
                result = draw(texts | json_values.map(lambda v: orjson.dumps(v).decode()))
                messages.append(Message("tool", (Text(result),), tool_call_id=call.id))
    return tuple(messages)


def build(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, TARGET).body)
    return body


@settings(max_examples=150, deadline=None)
@given(
    conversations(),
    st.none() | st.floats(0, 2),
    st.none() | st.integers(1, 10_000),
    st.none() | st.lists(texts, max_size=3).map(tuple),
)
def test_any_valid_conversation_translates(
    messages: tuple[Message, ...], temperature: float | None, max_tokens: int | None, stop: tuple[str, ...] | None
) -> None:
    request = ChatRequest(
        "google/gemini-2.5-flash", messages, temperature=temperature, max_tokens=max_tokens, stop=stop
    )

    body = build(request)

    roles = [turn["role"] for turn in body["contents"]]
    assert all(a != b for a, b in itertools.pairwise(roles))  # merged: user and model alternate
    assert set(roles) <= {"user", "model"}
    assert all(turn["parts"] for turn in body["contents"])
    system = [p.text for m in messages if m.role in ("system", "developer") for p in m.parts if isinstance(p, Text)]
    assert [p["text"] for p in body.get("systemInstruction", {}).get("parts", [])] == system
    called = [p.name for m in messages for p in m.parts if isinstance(p, ToolCall)]
    answered = [p["functionResponse"]["name"] for t in body["contents"] for p in t["parts"] if "functionResponse" in p]
    assert answered == called


@settings(max_examples=200, deadline=None)
@given(model_parts())
def test_model_turns_round_trip(parts: tuple[Part, ...]) -> None:
    """Assistant parts sent to Gemini and read back as Gemini's answer are the same parts."""
    request = ChatRequest("google/gemini-2.5-flash", (Message("user", (Text("hi"),)), Message("assistant", parts)))
    model_turn = build(request)["contents"][1]
    answer = {"candidates": [{"content": model_turn, "finishReason": "STOP", "index": 0}]}

    parsed = ADAPTER.parse_response(orjson.dumps(answer)).choices[0].message.parts

    assert parsed == parts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(Text, texts) | images, min_size=1, max_size=5))
def test_user_content_round_trips(parts: list[Text | Image]) -> None:
    request = ChatRequest("google/gemini-2.5-flash", (Message("user", tuple(parts)),))
    [turn] = build(request)["contents"]

    assert [_back(p) for p in turn["parts"]] == parts


def _back(part: dict[str, Any]) -> Text | Image:
    if "text" in part:
        return Text(part["text"])
    if "inlineData" in part:
        return Image(f"data:{part['inlineData']['mimeType']};base64,{part['inlineData']['data']}")
    return Image(part["fileData"]["fileUri"])
