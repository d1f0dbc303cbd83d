"""aipower/providers/anthropic: build/parse on the wire fixtures in tests/fakes/wire/anthropic (no sockets)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from aipower import sse
from aipower.api.openai_chat_wire import parse_request
from aipower.catalog import Target, load
from aipower.errors import InvalidRequest, UpstreamError
from aipower.messages import (
    ChatRequest,
    ChatResponse,
    Choice,
    Finish,
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
from aipower.providers.anthropic import AnthropicMessages

WIRE = Path(__file__).parents[1] / "fakes" / "wire" / "anthropic"
CATALOG = load()
TARGET = Target(
    model=CATALOG.models["anthropic/claude-sonnet"],
    provider=CATALOG.providers["anthropic"],
    base_url="https://api.anthropic.com",
    api_key="sk-ant-test-key",
)
ADAPTER = AnthropicMessages(CATALOG.providers["anthropic"])


def fixture(name: str) -> dict[str, Any]:
    return json.loads((WIRE / f"{name}.json").read_text("utf-8"))


def cases(key: str) -> list[str]:
    return sorted(p.stem for p in WIRE.glob("*.json") if key in fixture(p.stem))


def build(openai_request: dict[str, Any]) -> dict[str, Any]:
    built = ADAPTER.build_request(parse_request(orjson.dumps(openai_request)), TARGET)
    body: dict[str, Any] = orjson.loads(built.body)
    return body


def chat(**fields: Any) -> dict[str, Any]:
    return build({"model": "anthropic/claude-sonnet", "messages": [{"role": "user", "content": "hi"}], **fields})


async def stream_events(name: str, chunk_size: int = 61) -> list[StreamEvent]:
    data = (WIRE / name).read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    return [event async for event in ADAPTER.parse_stream(sse.decode(chunks()))]


def collapse(events: Iterable[StreamEvent]) -> list[StreamEvent]:
    """Consecutive text, reasoning text and tool-argument fragments joined, so long streams compare readably."""
    out: list[StreamEvent] = []
    for event in events:
        last = out[-1] if out else None
        match event, last:
            case TextDelta(), TextDelta():
                out[-1] = replace(last, text=last.text + event.text)
            case ReasoningDelta(signature=None), ReasoningDelta(signature=None):
                out[-1] = replace(last, text=last.text + event.text)
            case ToolCallDelta(id=None), ToolCallDelta() if last.call_index == event.call_index:
                out[-1] = replace(last, arguments_fragment=last.arguments_fragment + event.arguments_fragment)
            case _:
                out.append(event)
    return out


def assemble(events: list[StreamEvent]) -> ChatResponse:
    """The ChatResponse a stream adds up to (tool arguments re-serialised, as the non-stream path does)."""
    parts: list[Any] = []
    finish, usage = None, None
    for event in collapse(events):
        match event:
            case TextDelta(text=text):
                parts.append(Text(text))
            case ReasoningDelta(text=text, signature=None):
                parts.append(Reasoning(text))
            case ReasoningDelta(signature=signature):
                parts[-1] = replace(parts[-1], signature=signature)
            case ToolCallDelta(id=call_id, name=name, arguments_fragment=args):
                assert call_id is not None and name is not None
                parts.append(ToolCall(call_id, name, orjson.dumps(json.loads(args)).decode()))
            case Finish(reason=reason):
                finish = reason
            case UsageReport(usage=reported):
                usage = reported
    return ChatResponse((Choice(0, Message("assistant", tuple(parts)), finish),), usage)


def answer(parts: tuple[Any, ...], finish: Any, usage: Usage) -> ChatResponse:
    return ChatResponse((Choice(0, Message("assistant", parts), finish),), usage)


def body_text(name: str, block: int = 0) -> str:
    text: str = fixture(name)["response"]["body"]["content"][block]["text"]
    return text


# --- requests: every fixture's OpenAI request becomes exactly its Anthropic request --------------------------


@pytest.mark.parametrize("case", cases("anthropic_request"))
def test_build_request_matches_fixture(case: str) -> None:
    wire = fixture(case)
    built = ADAPTER.build_request(parse_request(orjson.dumps(wire["openai_request"])), TARGET)
    assert built.url == "https://api.anthropic.com/v1/messages"
    assert built.headers == {
        "x-api-key": "sk-ant-test-key",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert orjson.loads(built.body) == wire["anthropic_request"]


def test_base_url_comes_from_the_target() -> None:
    target = replace(TARGET, base_url="http://127.0.0.1:9/anthropic/")
    built = ADAPTER.build_request(parse_request(orjson.dumps(fixture("plain-text")["openai_request"])), target)
    assert built.url == "http://127.0.0.1:9/anthropic/v1/messages"


# --- responses -----------------------------------------------------------------------------------------------

RESPONSES: dict[str, ChatResponse] = {
    "plain-text": answer(
        (Text("Hi there! How are you doing today? Is there anything I can help you with?"),), "stop", Usage(8, 21)
    ),
    "system-prompt": answer((Text("The capital of France is Paris."),), "stop", Usage(20, 10)),
    "multi-turn": answer((Text(body_text("multi-turn")),), "stop", Usage(86, 316)),
    "cached-prompt": answer((Text(body_text("cached-prompt")),), "stop", Usage(3 + 1111 + 418, 33, 1111)),
    "image-url": answer((Text(body_text("image-url")),), "stop", Usage(296, 91)),
    "image-base64": answer((Text("The pixel is red."),), "stop", Usage(18, 7)),
    "tool-call": answer(
        (ToolCall("toolu_01Dxp8hdnkA8bsrVJJ8LB9q1", "get_weather", '{"city":"Paris"}'),), "tool_calls", Usage(655, 38)
    ),
    "parallel-tool-calls": answer(
        (
            Text(body_text("parallel-tool-calls")),
            ToolCall("toolu_0167cfEnoQaPviGdVXA95zcu", "retrieve_entity_info", '{"name":"Alice"}'),
            ToolCall("toolu_01EEe2V5HD1Ac4rKiUR4HD2T", "retrieve_entity_info", '{"name":"Bob"}'),
            ToolCall("toolu_01XFyAjstT3966qvRynZyVPo", "retrieve_entity_info", '{"name":"Charlie"}'),
            ToolCall("toolu_013mnQZbgtK2oe3Mo3XKJsx3", "retrieve_entity_info", '{"name":"Daisy"}'),
        ),
        "tool_calls",
        Usage(423, 202),
    ),
    "tool-result": answer((Text(body_text("tool-result")),), "stop", Usage(771, 77)),
    "json-schema": answer(
        (Text('{"city":"London","country":"United Kingdom","population":9002488}'),), "stop", Usage(412, 61)
    ),
    "reasoning": answer(
        (
            Reasoning(
                "The user is asking what 1+1 equals and wants a one-word reply. The answer is 2, which is one word.",
                fixture("reasoning")["response"]["body"]["content"][0]["signature"],
            ),
            Text("Two"),
        ),
        "stop",
        Usage(48, 42),
    ),
    "max-tokens": answer((Text("Waves roll in"),), "length", Usage(14, 5)),
    "stop-sequence": answer((Text("The beautiful city of "),), "stop", Usage(32, 5)),
}


@pytest.mark.parametrize("case", sorted(RESPONSES))
def test_parse_response(case: str) -> None:
    body = orjson.dumps(fixture(case)["response"]["body"])
    assert ADAPTER.parse_response(body) == RESPONSES[case]


def test_every_json_response_fixture_has_an_expected_result() -> None:
    ok = [c for c in cases("response") if fixture(c)["response"]["status"] == 200]
    assert sorted(ok) == sorted(RESPONSES)


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"content": "x", "usage": {}}', b"[]"])
def test_unreadable_response_is_502(body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        ADAPTER.parse_response(body)
    assert (caught.value.status, caught.value.code) == (502, "upstream_bad_response")


def test_redacted_thinking_and_refusal() -> None:
    body = {
        "content": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"}, {"type": "text", "text": "I can't."}],
        "stop_reason": "refusal",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    response = ADAPTER.parse_response(orjson.dumps(body))
    parts = (Reasoning("", "EmwKAhgBEgy3va", redacted=True), Text("I can't."))
    assert response == answer(parts, "content_filter", Usage(5, 3))


# --- streams -------------------------------------------------------------------------------------------------


async def test_stream_text_recorded() -> None:
    events = await stream_events("stream-text.sse")
    assert events == [TextDelta(0, "2"), Finish(0, "stop"), UsageReport(Usage(20, 5))]


async def test_stream_thinking_recorded() -> None:
    events = collapse(await stream_events("stream-thinking.sse"))
    sse_text = (WIRE / "stream-thinking.sse").read_text("utf-8")
    signature = sse_text.split('"signature":"')[2].split('"')[0]
    assert [type(e).__name__ for e in events] == [
        "ReasoningDelta",
        "ReasoningDelta",
        "TextDelta",
        "Finish",
        "UsageReport",
    ]
    assert events[0] == ReasoningDelta(
        0,
        "This is a straightforward question about pedestrian safety. I should provide clear, helpful advice about how"
        " to safely cross a street. This is basic safety information that could help prevent accidents.",
    )
    assert events[1] == ReasoningDelta(0, "", signature)
    assert isinstance(events[2], TextDelta)
    assert events[2].text.startswith("Here are the basic steps for safely crossing the street:\n\n**At")
    assert events[3:] == [Finish(0, "stop"), UsageReport(Usage(43, 282))]


async def test_stream_tool_call_index_counts_tool_use_blocks_only() -> None:
    events = collapse(await stream_events("stream-tool-after-server-blocks.sse"))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].call_index == 0 and calls[0].name == "get_exchange_rate" and calls[0].id is not None
    assert all(c.call_index == 0 for c in calls)
    assert json.loads("".join(c.arguments_fragment for c in calls)) == {"from_currency": "USD", "to_currency": "EUR"}
    assert isinstance(events[-2], Finish) and events[-2].reason == "tool_calls"


@pytest.mark.parametrize("case", ["plain-text", "parallel-tool-calls", "json-schema", "reasoning", "max-tokens"])
async def test_stream_adds_up_to_the_same_answer(case: str) -> None:
    events = await stream_events(f"stream-{case}.sse", chunk_size=17)
    assembled = assemble(events)
    if case == "json-schema":  # the streamed JSON keeps the model's spacing; the non-streamed one is re-serialised
        (text,) = assembled.choices[0].message.parts
        assert isinstance(text, Text)
        message = Message("assistant", (Text(orjson.dumps(json.loads(text.text)).decode()),))
        assembled = replace(assembled, choices=(replace(assembled.choices[0], message=message),))
    assert assembled == RESPONSES[case]
    assert sum(isinstance(e, UsageReport) for e in events) == 1 and isinstance(events[-1], UsageReport)


async def test_stream_parallel_tool_calls_exact_events() -> None:
    events = collapse(await stream_events("stream-parallel-tool-calls.sse"))
    assert events[1:] == [
        ToolCallDelta(0, 0, "toolu_0167cfEnoQaPviGdVXA95zcu", "retrieve_entity_info", '{"name": "Alice"}'),
        ToolCallDelta(0, 1, "toolu_01EEe2V5HD1Ac4rKiUR4HD2T", "retrieve_entity_info", '{"name": "Bob"}'),
        ToolCallDelta(0, 2, "toolu_01XFyAjstT3966qvRynZyVPo", "retrieve_entity_info", '{"name": "Charlie"}'),
        ToolCallDelta(0, 3, "toolu_013mnQZbgtK2oe3Mo3XKJsx3", "retrieve_entity_info", '{"name": "Daisy"}'),
        Finish(0, "tool_calls"),
        UsageReport(Usage(423, 202)),
    ]


async def test_stream_error_event_mid_stream_raises_mapped_error() -> None:
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as caught:
        data = (WIRE / "stream-error.sse").read_bytes()

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        async for event in ADAPTER.parse_stream(sse.decode(chunks())):
            received.append(event)
    assert received == [TextDelta(0, "Hello")]
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (503, "upstream_unavailable", True)
    assert "Overloaded" in caught.value.message
    # message_start's real input count travels with the error: the gateway bills it, estimating only the output
    assert caught.value.usage_so_far is not None and caught.value.usage_so_far.input_tokens == 8


async def test_stream_error_before_content_raises_before_any_event() -> None:
    with pytest.raises(UpstreamError) as caught:
        await stream_events("stream-error-before-content.sse")
    assert caught.value.status == 503


def sse_bytes(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


async def parse_raw(data: bytes) -> list[StreamEvent]:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return [event async for event in ADAPTER.parse_stream(sse.decode(chunks()))]


START = {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}}


async def test_stream_tool_without_input_gets_empty_object_and_unknown_events_are_ignored() -> None:
    events = await parse_raw(
        sse_bytes(
            START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t1", "name": "now"},
            },
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
            {"type": "content_block_stop", "index": 0},
            {"type": "some_future_event", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
            {"type": "message_stop"},
        )
    )
    assert events == [
        ToolCallDelta(0, 0, "t1", "now", ""),
        ToolCallDelta(0, 0, None, None, "{}"),
        Finish(0, "tool_calls"),
        UsageReport(Usage(3, 9)),
    ]


async def test_stream_redacted_thinking_keeps_its_data() -> None:
    events = await parse_raw(
        sse_bytes(
            START,
            {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "Ab"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
            {"type": "message_stop"},
        )
    )
    assert events[0] == ReasoningDelta(0, "", "Ab", redacted=True)


async def test_stream_that_ends_early_is_502_and_finished_one_without_message_stop_is_fine() -> None:
    with pytest.raises(UpstreamError) as caught:
        await parse_raw(sse_bytes(START))
    assert caught.value.status == 502
    events = await parse_raw(sse_bytes(START, {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}))
    assert events == [Finish(0, "stop"), UsageReport(Usage(3, 1))]


@pytest.mark.parametrize("data", [b"data: nope\n\n", b"data: []\n\n", b'data: {"type":"content_block_delta"}\n\n'])
async def test_stream_garbage_is_502(data: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        await parse_raw(data)
    assert (caught.value.status, caught.value.code) == (502, "upstream_bad_response")


# --- errors --------------------------------------------------------------------------------------------------

ERRORS = {
    "error-400": (400, "upstream_invalid_request", False, None, "Anthropic rejected the request: This model does not"),
    "error-401": (502, "upstream_auth_failed", False, None, "ANTHROPIC_API_KEY"),
    "error-404": (502, "upstream_error", False, None, "Anthropic answered HTTP 404: model: claude-sonet-4-5"),
    "error-429": (429, "upstream_rate_limited", True, 17, "exceed the rate limit"),
    "error-500": (502, "upstream_error", True, None, "Internal server error"),
    "error-529": (503, "upstream_unavailable", True, None, "(HTTP 529): Overloaded"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_parse_error(case: str) -> None:
    response = fixture(case)["response"]
    error = ADAPTER.parse_error(response["status"], orjson.dumps(response["body"]), response["headers"])
    status, code, retryable, retry_after, text = ERRORS[case]
    assert (error.status, error.code, error.retryable, error.retry_after) == (status, code, retryable, retry_after)
    assert text in error.message


def test_parse_error_without_json_body() -> None:
    error = ADAPTER.parse_error(502, b"<html>Bad gateway</html>", {})
    assert (error.status, error.message) == (502, "Anthropic answered HTTP 502: <html>Bad gateway</html>")


# --- request mapping rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"metadata": {"a": "b"}}, "metadata"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"reasoning_effort": "high", "max_tokens": 1000}, "max_tokens"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_unsupported_fields_are_400_naming_them(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(**fields)
    assert caught.value.param == param


def test_openai_hints_that_change_no_answer_pass() -> None:
    """Codex-style clients send prompt_cache_key on every call (it was a 400); safety_identifier is Anthropic's
    metadata.user_id, and a caller's `user` wins over it."""
    hints = {"prompt_cache_key": "repo-1", "prompt_cache_retention": "24h", "service_tier": "auto"}
    body = chat(**hints, safety_identifier="end-user-7")
    assert "prompt_cache_key" not in body and "service_tier" not in body
    assert body["metadata"] == {"user_id": "end-user-7"}
    assert chat(safety_identifier="end-user-7", user="u-1")["metadata"] == {"user_id": "u-1"}
    assert "metadata" not in chat(service_tier="default")


def test_defaults_and_no_op_values_pass() -> None:
    body = chat(
        temperature=1,
        top_p=0.9,
        n=1,
        seed=42,
        presence_penalty=0,
        frequency_penalty=0.0,
        logprobs=False,
        parallel_tool_calls=True,
        reasoning_effort="none",
        store=None,
    )
    assert body == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 64000,
        "temperature": 1,
        "top_p": 0.9,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


@pytest.mark.parametrize(("effort", "budget"), [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 16384)])
def test_reasoning_effort_budgets(effort: str, budget: int) -> None:
    assert chat(reasoning_effort=effort)["thinking"] == {"type": "enabled", "budget_tokens": budget}


TOOL = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("fields", "choice"),
    [
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "now"}}}, {"type": "tool", "name": "now"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "required", "parallel_tool_calls": False}, {"type": "any", "disable_parallel_tool_use": True}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
    ],
)
def test_tool_choice(fields: dict[str, Any], choice: dict[str, Any]) -> None:
    body = chat(tools=[TOOL], **fields)
    assert body["tool_choice"] == choice
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_choice_without_tools_is_a_no_op() -> None:
    assert "tool_choice" not in chat(tool_choice="none") and "tools" not in chat(tool_choice="auto")


def test_json_object_is_a_forced_object_tool() -> None:
    body = chat(response_format={"type": "json_object"})
    assert body["tools"] == [
        {
            "name": "aipower_json_answer",
            "description": "Give your final answer as the input of this tool.",
            "input_schema": {"type": "object"},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "aipower_json_answer"}
    assert "tools" not in chat(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_object"}, "tools": [TOOL]}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}},
            "response_format.json_schema.schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "aipower_json_answer"}}]},
            "tools[0].function.name",
        ),
    ],
)
def test_json_mode_conflicts_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(**fields)
    assert caught.value.param == param


def messages_body(*messages: Message, **fields: Any) -> dict[str, Any]:
    request = ChatRequest(model="anthropic/claude-sonnet", messages=messages, **fields)
    body: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, TARGET).body)
    return body


def test_signed_reasoning_goes_back_as_thinking_and_unsigned_is_left_out() -> None:
    body = messages_body(
        Message("user", (Text("q"),)),
        Message(
            "assistant",
            (
                Reasoning("thought", "sig-1"),
                Reasoning("", "opaque", redacted=True),
                Reasoning("from another provider"),
                Text(""),
                ToolCall("toolu_1", "now", ""),
            ),
        ),
        Message("tool", (Text("12:00"),), tool_call_id="toolu_1"),
        Message("tool", (Text(""),), tool_call_id="toolu_2"),
        Message("user", (Text("and?"),)),
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "thought", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"},
                {"type": "tool_result", "tool_use_id": "toolu_2"},
                {"type": "text", "text": "and?"},
            ],
        },
    ]


ASK = Message("user", (Text("Weather in Paris?"),))
CALL = ToolCall("toolu_1", "now", "{}")
RESULT = Message("tool", (Text("sunny"),), tool_call_id="toolu_1")


@pytest.mark.parametrize(
    ("messages", "thinking"),
    [
        ((ASK,), True),  # turn 1 of a loop
        ((ASK, Message("assistant", (Reasoning("plan", "sig-1"), CALL)), RESULT), True),  # signed: sent back
        ((ASK, Message("assistant", (Reasoning("", "opaque", redacted=True), CALL)), RESULT), True),
        ((ASK, Message("assistant", (CALL,)), RESULT), False),  # no signature to send back: thinking left out
        ((ASK, Message("assistant", (Reasoning("unsigned plan"), Text("Looking."), CALL)), RESULT), False),
        ((ASK, Message("assistant", (CALL,)), RESULT, Message("user", (Text("and Rome?"),))), False),  # same loop
        ((ASK, Message("assistant", (CALL,)), RESULT, Message("assistant", (Text("Sunny."),)), ASK), True),  # loop over
        ((ASK, Message("assistant", (Text("Which city?"),)), ASK), True),
    ],
)
def test_thinking_is_left_out_of_a_tool_loop_whose_assistant_turn_has_no_signed_thinking(
    messages: tuple[Message, ...], thinking: bool
) -> None:
    """Anthropic: "When `thinking` is enabled, a final `assistant` message must start with a thinking block
    (preceeding the lastmost set of `tool_use` and `tool_result` blocks) ... To avoid this requirement, disable
    thinking." OpenAI-wire callers never get the signature, so their tool loops go on without thinking."""
    body = messages_body(*messages, extra={"reasoning_effort": "low"})
    assert ("thinking" in body) is thinking
    if thinking:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_reasoning_effort_is_still_checked_in_a_tool_loop() -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_body(ASK, Message("assistant", (CALL,)), RESULT, max_tokens=1000, extra={"reasoning_effort": "low"})
    assert caught.value.param == "max_tokens"


def test_tool_result_with_an_image_keeps_blocks() -> None:
    body = messages_body(Message("tool", (Text("chart:"), Image("https://x.test/c.png")), tool_call_id="t"))
    assert body["messages"][0]["content"][0]["content"] == [
        {"type": "text", "text": "chart:"},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/c.png"}},
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (Message("assistant", (ToolCall("t", "f", "{nope"),)), "messages[0].tool_calls[0].function.arguments"),
        (
            Message(
                "assistant",
                (
                    Text("a"),
                    ToolCall("t", "f", "[1]"),
                ),
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (Message("assistant", (Image("https://x.test/a.png"),)), "messages[0].content"),
        (Message("system", (Image("https://x.test/a.png"),)), "messages[0].content"),
        (Message("user", (Image("ftp://x.test/a.png"),)), "messages[0].content"),
        (Message("user", (Image("data:image/png,abc"),)), "messages[0].content"),
        (Message("user", (ToolCall("t", "f", "{}"),)), "messages[0].content"),
        (Message("tool", (Text("x"),)), "messages[0].tool_call_id"),
    ],
)
def test_inexpressible_messages_are_400(message: Message, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_body(message)
    assert caught.value.param == param


def test_invalid_tool_arguments_through_the_openai_wire_name_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        build(
            {
                "model": "anthropic/claude-sonnet",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{oops"}},
                        ],
                    },
                ],
            }
        )
    assert caught.value.param == "messages[1].tool_calls[1].function.arguments"
