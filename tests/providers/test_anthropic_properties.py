"""aipower/providers/anthropic: properties over generated conversations and answers (hypothesis).

Any valid internal message list translates without an exception, and what both sides can express survives:
texts, images, tool calls and tool results come out in order, and system text is joined into `system`.
A generated answer parses to the same thing whether it arrives as one message or as a fragmented stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from aipower import sse
from aipower.catalog import Target, load
from aipower.messages import (
    ChatRequest,
    Finish,
    Image,
    Message,
    Part,
    Reasoning,
    ReasoningDelta,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from aipower.providers.anthropic import AnthropicMessages

CATALOG = load()
TARGET = Target(CATALOG.models["anthropic/claude-sonnet"], CATALOG.providers["anthropic"], "https://a.test", "k")
ADAPTER = AnthropicMessages(CATALOG.providers["anthropic"])

texts = st.text(max_size=12)
ids = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
arguments = st.dictionaries(texts, json_values, max_size=3)
images = st.one_of(
    st.builds(lambda path: Image(f"https://img.test/{path}.png"), ids),
    st.builds(
        lambda data: Image(f"data:image/jpeg;base64,{data}"), st.from_regex(r"[A-Za-z0-9+/]{4,16}", fullmatch=True)
    ),
)
tool_calls = st.builds(lambda i, n, a: ToolCall(i, n, json.dumps(a)), ids, names, arguments)
signed = st.builds(lambda t, s: Reasoning(t, s), texts, ids)


def message_of(role: str, parts: st.SearchStrategy[Part]) -> st.SearchStrategy[Message]:
    return st.builds(lambda ps: Message(role, tuple(ps)), st.lists(parts, min_size=1, max_size=4))  # type: ignore[arg-type]


messages = st.one_of(
    message_of("system", st.builds(Text, texts)),
    message_of("developer", st.builds(Text, texts)),
    message_of("user", st.one_of(st.builds(Text, texts), images)),
    st.builds(
        lambda thinking, ps: Message("assistant", (*thinking, *ps)),
        st.lists(signed, max_size=1),
        st.lists(st.one_of(st.builds(Text, texts), tool_calls), min_size=1, max_size=4),
    ),
    st.builds(lambda i, t: Message("tool", (Text(t),), tool_call_id=i), ids, texts),
)


def expected_items(conversation: list[Message]) -> list[tuple[Any, ...]]:
    items: list[tuple[Any, ...]] = []
    for m in conversation:
        if m.role == "tool":
            text = "".join(p.text for p in m.parts if isinstance(p, Text))
            items.append(("result", m.tool_call_id, text or None))
            continue
        for p in m.parts:
            match p:
                case Text(text=text) if text and m.role in ("user", "assistant"):
                    items.append(("text", "user" if m.role == "user" else "assistant", text))
                case Image(url=url):
                    items.append(("image", url))
                case ToolCall(id=i, name=n, arguments_json=a):
                    items.append(("call", i, n, json.loads(a)))
                case Reasoning(text=t, signature=s) if s is not None:
                    items.append(("thinking", t, s))
    return items


def sent_items(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The small inverse: Anthropic blocks back to comparable items."""
    items: list[tuple[Any, ...]] = []
    for turn in body["messages"]:
        for block in turn["content"]:
            match block["type"]:
                case "text":
                    items.append(("text", turn["role"], block["text"]))
                case "image":
                    source = block["source"]
                    url = source.get("url") or f"data:{source['media_type']};base64,{source['data']}"
                    items.append(("image", url))
                case "tool_use":
                    items.append(("call", block["id"], block["name"], block["input"]))
                case "tool_result":
                    items.append(("result", block["tool_use_id"], block.get("content")))
                case "thinking":
                    items.append(("thinking", block["thinking"], block["signature"]))
    return items


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=8))
def test_any_conversation_translates_and_round_trips(conversation: list[Message]) -> None:
    request = ChatRequest(model="anthropic/claude-sonnet", messages=tuple(conversation))
    body = orjson.loads(ADAPTER.build_request(request, TARGET).body)

    assert sent_items(body) == expected_items(conversation)
    system = [
        "".join(p.text for p in m.parts if isinstance(p, Text))
        for m in conversation
        if m.role in ("system", "developer")
    ]
    assert body.get("system", "") == "\n\n".join(s for s in system if s)
    roles = [turn["role"] for turn in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "turns alternate"
    assert all(turn["content"] for turn in body["messages"]), "no empty turns"


blocks = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(min_size=1, max_size=30)),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, st.text(max_size=30), ids),
    st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a}, ids, names, arguments),
)


def as_stream(content: list[dict[str, Any]], stop: str, cut: int) -> bytes:
    def event(data: dict[str, Any]) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"

    def pieces(text: str) -> list[str]:
        return [text[i : i + cut] for i in range(0, len(text), cut)]

    out = [event({"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}})]
    for index, block in enumerate(content):
        start = {**block, "input": {}} if block["type"] == "tool_use" else {**block, "text": "", "thinking": ""}
        out.append(event({"type": "content_block_start", "index": index, "content_block": start}))
        deltas: list[dict[str, Any]] = []
        if block["type"] == "text":
            deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"])]
        elif block["type"] == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(json.dumps(block["input"]))]
        out += [event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        out.append(event({"type": "content_block_stop", "index": index}))
    out.append(event({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}}))
    out.append(event({"type": "message_stop"}))
    return "".join(out).encode()


def fold(events: list[StreamEvent]) -> tuple[list[Part], Any, Any]:
    parts: list[Any] = []
    finish = usage = None
    for e in events:
        match e:
            case TextDelta(text=t):
                if parts and isinstance(parts[-1], Text) and not getattr(parts[-1], "closed", False):
                    parts[-1] = Text(parts[-1].text + t)
                else:
                    parts.append(Text(t))
            case ReasoningDelta(text=t, signature=None):
                if parts and isinstance(parts[-1], Reasoning) and parts[-1].signature is None:
                    parts[-1] = Reasoning(parts[-1].text + t)
                else:
                    parts.append(Reasoning(t))
            case ReasoningDelta(signature=s):
                if not (parts and isinstance(parts[-1], Reasoning) and parts[-1].signature is None):
                    parts.append(Reasoning(""))
                parts[-1] = Reasoning(parts[-1].text, s)
            case ToolCallDelta(id=i, name=n) if i is not None and n is not None:
                parts.append(ToolCall(i, n, ""))
            case ToolCallDelta(arguments_fragment=f):
                parts[-1] = ToolCall(parts[-1].id, parts[-1].name, parts[-1].arguments_json + f)
            case Finish(reason=r):
                finish = r
            case UsageReport(usage=u):
                usage = u
    return parts, finish, usage


def comparable(parts: Any) -> list[Any]:
    out: list[Any] = []
    for p in parts:
        if isinstance(p, ToolCall):
            out.append(("call", p.id, p.name, json.loads(p.arguments_json)))
        elif isinstance(p, Text) and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + p.text)  # adjacent text blocks read as one text
        elif isinstance(p, Text):
            out.append(("text", p.text))
        else:
            out.append(("thinking", p.text, p.signature))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(blocks, min_size=1, max_size=5),
    st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal"]),
    st.integers(1, 7),
    st.integers(1, 50),
)
def test_stream_and_message_agree(content: list[dict[str, Any]], stop: str, cut: int, chunk: int) -> None:
    message = {"content": content, "stop_reason": stop, "usage": {"input_tokens": 7, "output_tokens": 5}}
    whole = ADAPTER.parse_response(orjson.dumps(message)).choices[0]
    data = as_stream(content, stop, cut)

    async def collect() -> list[StreamEvent]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), chunk):
                yield data[i : i + chunk]

        return [e async for e in ADAPTER.parse_stream(sse.decode(chunks()))]

    parts, finish, usage = fold(asyncio.run(collect()))
    assert comparable(parts) == comparable(whole.message.parts)
    assert finish == whole.finish_reason
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (7, 5)
    calls = [e for e in asyncio.run(collect()) if isinstance(e, ToolCallDelta) and e.id is not None]
    assert [c.call_index for c in calls] == list(range(len(calls)))
