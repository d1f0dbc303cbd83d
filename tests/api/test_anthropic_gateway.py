"""Anthropic models through the running gateway with the openai SDK, against the fake upstream at /anthropic.

The upstream replies are the wire fixtures in tests/fakes/wire/anthropic; each case checks the Anthropic request
the fake received, the exact OpenAI JSON the caller got, and that the streamed answer adds up to the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, JsonReply, RawReply

WIRE = Path(__file__).parents[1] / "fakes" / "wire" / "anthropic"
MODEL = "anthropic/claude-sonnet"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((WIRE / f"{name}.json").read_text("utf-8"))


def sse(name: str) -> RawReply:
    return RawReply((WIRE / f"{name}.sse").read_bytes(), media_type="text/event-stream")


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def message(content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **extra}


def calls(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"id": call_id, "type": "function", "function": {"name": "retrieve_entity_info", "arguments": args}}
        for call_id, args in pairs
    ]


ANSWERS: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "plain-text": (
        message("Hi there! How are you doing today? Is there anything I can help you with?"),
        "stop",
        usage(8, 21),
    ),
    "parallel-tool-calls": (
        message(
            "I'll help you find out who is the youngest by retrieving information about each family member. "
            "I'll retrieve their entity information to compare their ages.",
            tool_calls=calls(
                ("toolu_0167cfEnoQaPviGdVXA95zcu", '{"name":"Alice"}'),
                ("toolu_01EEe2V5HD1Ac4rKiUR4HD2T", '{"name":"Bob"}'),
                ("toolu_01XFyAjstT3966qvRynZyVPo", '{"name":"Charlie"}'),
                ("toolu_013mnQZbgtK2oe3Mo3XKJsx3", '{"name":"Daisy"}'),
            ),
        ),
        "tool_calls",
        usage(423, 202),
    ),
    "json-schema": (
        message('{"city":"London","country":"United Kingdom","population":9002488}'),
        "stop",
        usage(412, 61),
    ),
    "reasoning": (
        message(
            "Two",
            reasoning_content="The user is asking what 1+1 equals and wants a one-word reply. "
            "The answer is 2, which is one word.",
        ),
        "stop",
        usage(48, 42),
    ),
    "max-tokens": (message("Waves roll in"), "length", usage(14, 5)),
}


def check_upstream_request(upstream: FakeUpstream, expected: dict[str, Any]) -> None:
    sent = upstream.last
    assert (sent.method, sent.path) == ("POST", "/anthropic/v1/messages")
    assert sent.headers["x-api-key"] == "sk-fake-anthropic-secret"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == expected


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_non_stream_answer_is_exact_openai_json(client: openai.OpenAI, upstream: FakeUpstream, case: str) -> None:
    wire = fixture(case)
    upstream.enqueue(JsonReply(wire["response"]["body"]))

    raw = client.chat.completions.with_raw_response.create(**wire["openai_request"])
    body = raw.http_response.json()

    check_upstream_request(upstream, wire["anthropic_request"])
    assert body["id"].startswith("chatcmpl-") and isinstance(body.pop("created"), int)
    body.pop("id")
    body["usage"].pop("cost", None)  # the price the billing layer adds; its arithmetic is tested there
    content, finish, expected_usage = ANSWERS[case]
    assert body == {
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": content, "logprobs": None, "finish_reason": finish}],
        "usage": expected_usage,
    }


def reassemble(chunks: list[Any]) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """The message, finish reason and usage a caller rebuilds from the SDK's chunks (tool calls by index)."""
    text, reasoning, finish, final_usage = "", "", None, None
    tools: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk.usage is not None:
            final_usage = chunk.usage.model_dump(exclude_none=True)
            final_usage.pop("cost", None)  # the price the billing layer adds; its arithmetic is tested there
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            for call in choice.delta.tool_calls or ():
                slot = tools.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or call.id
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    out = message(text or None)
    if reasoning:
        out["reasoning_content"] = reasoning
    if tools:
        out["tool_calls"] = [
            {"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}
            for _, t in sorted(tools.items())
        ]
    return out, finish, final_usage


def normalised(answer: dict[str, Any], json_text: bool) -> dict[str, Any]:
    """Tool arguments (and an emulated JSON answer) compared as JSON: a stream keeps the model's spacing."""
    answer = json.loads(json.dumps(answer))
    for call in answer.get("tool_calls", ()):
        call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    if json_text:
        answer["content"] = json.loads(answer["content"])
    return answer


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_stream_adds_up_to_the_non_stream_answer(client: openai.OpenAI, upstream: FakeUpstream, case: str) -> None:
    wire = fixture(f"stream-{case}")
    upstream.enqueue(sse(f"stream-{case}"))

    with client.chat.completions.create(**wire["openai_request"]) as stream:
        chunks = list(stream)

    check_upstream_request(upstream, wire["anthropic_request"])
    assert {c.model for c in chunks} == {MODEL}
    content, finish, expected_usage = ANSWERS[case]
    streamed, streamed_finish, streamed_usage = reassemble(chunks)
    assert normalised(streamed, case == "json-schema") == normalised(content, case == "json-schema")
    assert (streamed_finish, streamed_usage) == (finish, expected_usage)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the include_usage chunk comes last


def test_request_fixtures_reach_the_upstream_exactly(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    for case in (
        "system-prompt",
        "multi-turn",
        "image-url",
        "image-base64",
        "tool-call",
        "tool-result",
        "stop-sequence",
    ):
        wire = fixture(case)
        upstream.enqueue(JsonReply(wire["response"]["body"]))
        reply = client.chat.completions.create(**wire["openai_request"])
        check_upstream_request(upstream, wire["anthropic_request"])
        assert reply.choices[0].message.content == wire["response"]["body"]["content"][0].get("text")


def test_cached_prompt_tokens_are_reported(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    wire = fixture("cached-prompt")
    upstream.enqueue(JsonReply(wire["response"]["body"]))
    reply = client.chat.completions.create(**wire["openai_request"])
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert (reply.usage.prompt_tokens, reply.usage.prompt_tokens_details.cached_tokens) == (3 + 1111 + 418, 1111)


def error_reply(case: str) -> JsonReply:
    response = fixture(case)["response"]
    return JsonReply(response["body"], status=response["status"], headers=response["headers"])


def test_overloaded_529_is_503(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(error_reply("error-529"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert caught.value.status_code == 503
    assert "Overloaded" in caught.value.message


def test_rate_limit_429_keeps_retry_after(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(error_reply("error-429"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert caught.value.response.headers["retry-after"] == "17"


def test_upstream_400_is_400_with_anthropics_reason(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(error_reply("error-400"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}])
    assert "does not support effort level 'xhigh'" in caught.value.message


def test_error_event_mid_stream_raises_while_iterating(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("stream-error"))
    received = ""
    with (
        pytest.raises(openai.APIError) as caught,
        client.chat.completions.create(**fixture("stream-error")["openai_request"]) as stream,
    ):
        for chunk in stream:
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert received == "Hello"
    assert "Overloaded" in caught.value.message


def test_error_event_before_content_is_a_503_answer(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("stream-error-before-content"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(**fixture("stream-error-before-content")["openai_request"])
    assert caught.value.status_code == 503


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"temperature": 1.5}, "temperature"), ({"n": 2}, "n"), ({"logprobs": True}, "logprobs")],
)
def test_inexpressible_fields_are_400_before_any_upstream_call(
    client: openai.OpenAI, upstream: FakeUpstream, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **fields)
    assert caught.value.param == param
    assert upstream.requests == []
