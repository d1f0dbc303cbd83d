"""POST /v1/chat/completions through the openai SDK: answers, streams, usage, tools and images."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from tests.fakes.upstream import FakeUpstream, JsonReply, SseReply, completion, stream_chunks

MODEL = "deepseek/deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_completion_returns_the_upstream_answer_under_the_catalog_id(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO)

    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (12, 7, 19)
    assert upstream.last.json["model"] == "deepseek-chat"


def test_usage_is_estimated_when_the_upstream_omits_it(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    body = completion("deepseek-chat", "A fairly long answer without any usage block at all.")
    del body["usage"]
    upstream.enqueue(JsonReply(body))

    reply = client.chat.completions.create(model=MODEL, messages=HELLO)

    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert {c.model for c in chunks} == {MODEL}
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)

    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (9, 2, 11)
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == "Hello"


def test_stream_usage_chunk_is_estimated_when_the_upstream_sends_none(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(SseReply(stream_chunks("deepseek-chat", ["Hello", " there, friend"], usage=False)))
    with client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)

    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5  # 19 streamed characters, 4 to a token, rounded up
    assert last.usage.prompt_tokens > 0


def test_stream_is_framed_as_server_sent_events(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}

    response = http.post("/chat/completions", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.content
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    frames = raw.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    for frame in frames[:-2]:
        assert frame.startswith(b"data: {")
        assert b"\n" not in frame
        chunk = json.loads(frame[len(b"data: ") :])
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MODEL
    assert json.loads(frames[-3][len(b"data: ") :])["usage"]["total_tokens"] == 11


def test_tool_calls_come_back_parsed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    upstream.enqueue(JsonReply(completion("deepseek-chat", "", tool_calls=[call])))

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="auto",
    )

    assert upstream.last.json["tools"] == [WEATHER_TOOL]
    assert upstream.last.json["tool_choice"] == "auto"
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (parsed,) = choice.message.tool_calls
    assert parsed.id == "call_1"
    assert parsed.type == "function"
    assert parsed.function.name == "get_weather"
    assert json.loads(parsed.function.arguments) == {"city": "Paris"}


def _tool_call_chunk(index: int, function: dict[str, str], call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
    return {
        "id": "chatcmpl-upstream-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "deepseek-chat",
        "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}],
    }


def test_streamed_tool_call_fragments_keep_their_index(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    frames = (
        _tool_call_chunk(0, {"name": "get_weather", "arguments": ""}, "call_a"),
        _tool_call_chunk(0, {"arguments": '{"city": "Pa'}),
        _tool_call_chunk(1, {"name": "get_weather", "arguments": ""}, "call_b"),
        _tool_call_chunk(1, {"arguments": '{"city": "Oslo"}'}),
        _tool_call_chunk(0, {"arguments": 'ris"}'}),
        stream_chunks("deepseek-chat", [], usage=False, finish_reason="tool_calls")[-1],  # the finish chunk
    )
    upstream.enqueue(SseReply(frames))

    calls: dict[int, dict[str, str]] = {}
    finish = None
    with client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris and Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    ) as stream:
        for chunk in stream:
            for delta in chunk.choices[0].delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = chunk.choices[0].finish_reason or finish

    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }


def test_tool_results_reach_the_upstream_intact(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    tool = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21}'}

    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}, assistant, tool],
        tools=[WEATHER_TOOL],
    )

    assert reply.choices[0].message.content == "Hello from the fake upstream."
    sent = upstream.last.json["messages"]
    assert sent[1] == assistant
    assert sent[2] == tool


def test_image_parts_pass_through_unchanged(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    content = [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}},
    ]

    client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
    )

    assert upstream.last.json["messages"] == [{"role": "user", "content": content}]
