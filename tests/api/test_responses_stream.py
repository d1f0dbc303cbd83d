"""POST /v1/responses with stream: true: the documented event sequence, on the three wires, via the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, JsonReply, RawReply, SseReply, stream_chunks

WIRE = Path(__file__).parents[1] / "fakes" / "wire"
DEEPSEEK, CLAUDE, GEMINI = "deepseek/deepseek-chat", "anthropic/claude-sonnet", "google/gemini-2.5-flash"
TOOL: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
START = ["response.created", "response.in_progress"]
TEXT_ITEM = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def sse(wire: str, case: str) -> RawReply:
    return RawReply((WIRE / wire / f"{case}.sse").read_bytes(), media_type="text/event-stream")


def collect(client: openai.OpenAI, **params: Any) -> list[Any]:
    with client.responses.create(stream=True, **params) as stream:
        return list(stream)


def kinds(events: list[Any]) -> list[str]:
    """Event types, with runs of the same delta type collapsed to one."""
    out: list[str] = []
    for event in events:
        if not (event.type.endswith(".delta") and out and out[-1] == event.type):
            out.append(event.type)
    return out


def check_sequence(events: list[Any]) -> None:
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


def test_text_stream_event_sequence(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(SseReply(stream_chunks("deepseek-chat", ["Hel", "lo"], usage=True)))
    events = collect(client, model=DEEPSEEK, input="hi", instructions="Be brief.")

    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    check_sequence(events)
    created, final = events[0].response, events[-1].response
    assert (created.status, created.output, created.usage, created.model) == ("in_progress", [], None, DEEPSEEK)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hel", "lo"]
    assert events[6].text == "Hello" and events[8].item.status == "completed"
    assert final.status == "completed" and final.output_text == "Hello" and final.instructions == "Be brief."
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (9, 2)
    assert final.usage.model_extra is not None and float(final.usage.model_extra["cost"]) > 0
    assert upstream.last.json["stream_options"] == {"include_usage": True}  # usage asked of the upstream
    # the stored response is exactly the final event's
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_stream_helper_gives_the_final_response(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("anthropic", "stream-text"))
    with client.responses.stream(model=CLAUDE, input="What is 1+1?") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "2"
    assert final.status == "completed" and final.model == CLAUDE
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (20, 5)


def test_gemini_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(RawReply((WIRE / "gemini" / "stream-text.sse").read_bytes(), media_type="text/event-stream"))
    events = collect(client, model=GEMINI, input="What is the capital of France?")
    check_sequence(events)
    assert kinds(events) == [*START, *TEXT_ITEM, "response.completed"]
    final = events[-1].response
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text and final.usage is not None


def tool_call_chunks(interleaved: bool = False) -> tuple[Any, ...]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "deepseek-chat",
            "choices": [choice],
        }

    def call(index: int, fragment: str, head: tuple[str, str] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "function": {"arguments": fragment}}
        if head is not None:
            entry |= {"id": head[0], "type": "function", "function": {"name": head[1], "arguments": fragment}}
        return chunk({"tool_calls": [entry]})

    if interleaved:  # both calls open, then their arguments in turns
        calls = (
            call(0, "", ("call_1", "get_weather")),
            call(1, "", ("call_2", "get_weather")),
            call(0, '{"city":'),
            call(1, '{"city":"Rome"}'),
            call(0, '"Paris"}'),
        )
    else:
        calls = (
            call(0, "", ("call_1", "get_weather")),
            call(0, '{"city":'),
            call(0, '"Paris"}'),
            call(1, '{"city":"Rome"}', ("call_2", "get_weather")),
        )
    return (chunk({"role": "assistant", "content": "Checking."}), *calls, chunk({}, "tool_calls"))


def test_tool_call_stream_event_sequence(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(SseReply(tool_call_chunks()))
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    events = collect(client, model=DEEPSEEK, input="Weather?", tools=[tool])
    check_sequence(events)
    added = ["response.output_item.added", "response.function_call_arguments.delta"]
    done = ["response.function_call_arguments.done", "response.output_item.done"]
    # A call stays open until the next kind of item or the end: its arguments may come after the next call's.
    assert kinds(events) == [*START, *TEXT_ITEM, *added, *added, *done, *done, "response.completed"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.name, e.arguments, e.output_index) for e in done] == [  # type: ignore[attr-defined]
        ("get_weather", '{"city":"Paris"}', 1),
        ("get_weather", '{"city":"Rome"}', 2),
    ]
    final = events[-1].response
    assert [(i.type, getattr(i, "call_id", None)) for i in final.output] == [
        ("message", None),
        ("function_call", "call_1"),
        ("function_call", "call_2"),
    ]


def test_interleaved_parallel_tool_calls(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """An OpenAI-wire provider may send the arguments of parallel calls in turns: each delta goes to its own item."""
    upstream.enqueue(SseReply(tool_call_chunks(interleaved=True)))
    events = collect(client, model=DEEPSEEK, input="Weather?", tools=[TOOL])
    check_sequence(events)
    assert events[-1].type == "response.completed"
    calls = [i for i in events[-1].response.output if i.type == "function_call"]
    assert [(i.call_id, i.arguments, i.status) for i in calls] == [
        ("call_1", '{"city":"Paris"}', "completed"),
        ("call_2", '{"city":"Rome"}', "completed"),
    ]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    ids = {1: calls[0].id, 2: calls[1].id}
    assert [(e.output_index, e.item_id, e.delta) for e in deltas] == [  # type: ignore[attr-defined]
        (1, ids[1], '{"city":'),
        (2, ids[2], '{"city":"Rome"}'),
        (1, ids[1], '"Paris"}'),
    ]


def test_gemini_tool_call_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("gemini", "stream-tool-call"))
    request = json.loads((WIRE / "gemini" / "stream-tool-call.json").read_text())["openai_request"]
    tools = [{"type": "function", **t["function"]} for t in request["tools"]]
    events = collect(client, model=GEMINI, input="What is the temperature of the capital of France?", tools=tools)
    check_sequence(events)
    final = events[-1].response
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls and all(c.name in {"get_capital", "get_temperature"} for c in calls)
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == [item.type for item in final.output]


def test_reasoning_stream_event_sequence(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("anthropic", "stream-reasoning"))
    events = collect(
        client, model=CLAUDE, input="What is 1+1?", reasoning={"effort": "minimal"}, max_output_tokens=4096
    )
    check_sequence(events)
    reasoning_item = [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds(events) == [*START, *reasoning_item, *TEXT_ITEM, "response.completed"]
    final = events[-1].response
    reasoning = final.output[0]
    expected = json.loads((WIRE / "anthropic" / "reasoning.json").read_text())["response"]["body"]["content"][0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert (reasoning.content[0].text, reasoning.encrypted_content) == (expected["thinking"], expected["signature"])
    assert final.output_text == "Two"


def test_max_tokens_stream_ends_incomplete(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("anthropic", "stream-max-tokens"))
    events = collect(client, model=CLAUDE, input="Write a poem about the sea.", max_output_tokens=5)
    check_sequence(events)
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "Waves roll in" and final.output[-1].status == "incomplete"


def test_error_mid_stream_is_response_failed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(sse("anthropic", "stream-error"))
    events = collect(client, model=CLAUDE, input="hello")
    check_sequence(events)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and "Overloaded" in failed.error.message
    assert failed.error.code == "server_error"  # ResponseErrorCode has no gateway codes: ours is in the message
    assert "(code: upstream_unavailable)" in failed.error.message
    assert failed.output_text == "Hello" and failed.output[0].status == "incomplete"
    assert client.responses.retrieve(failed.id).status == "failed"


def test_rate_limit_mid_stream_is_rate_limit_exceeded(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    overloaded = (WIRE / "anthropic" / "stream-error.sse").read_bytes()
    limited = overloaded.replace(
        b'"overloaded_error","message":"Overloaded"', b'"rate_limit_error","message":"Slow down"'
    )
    upstream.enqueue(RawReply(limited, media_type="text/event-stream"))
    failed = collect(client, model=CLAUDE, input="hello")[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "rate_limit_exceeded" and "Slow down" in failed.error.message


def cut_in_a_function_call(client: openai.OpenAI, upstream: FakeUpstream) -> Any:
    """A stored response whose stream failed halfway through a call's arguments."""
    head = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":'},
    }
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-chat"}
    first = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [head]}}]}
    upstream.enqueue(SseReply((first, {"error": {"message": "boom", "type": "server_error"}}), done=False))
    failed = collect(client, model=DEEPSEEK, input="Weather in Paris?", tools=[TOOL])[-1].response
    assert failed.status == "failed" and failed.output[0].status == "incomplete"
    return failed


@pytest.mark.parametrize("model", [DEEPSEEK, CLAUDE])
def test_a_call_cut_mid_stream_is_not_replayed(client: openai.OpenAI, upstream: FakeUpstream, model: str) -> None:
    failed = cut_in_a_function_call(client, upstream)
    upstream.reset()
    if model == CLAUDE:
        upstream.enqueue(
            JsonReply(json.loads((WIRE / "anthropic" / "plain-text.json").read_text())["response"]["body"])
        )
    client.responses.create(model=model, previous_response_id=failed.id, input="Try again.", tools=[TOOL])
    sent = upstream.last.body.decode()
    assert "call_1" not in sent and "get_weather" in sent and "Weather in Paris?" in sent  # the tool, not the call


def test_an_output_for_a_cut_call_is_400(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    failed = cut_in_a_function_call(client, upstream)
    upstream.reset()
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=DEEPSEEK, previous_response_id=failed.id, input=[output], tools=[TOOL])
    assert caught.value.param == "input[0].call_id" and "previous_response_id" in caught.value.message
    assert upstream.requests == []


def test_error_before_the_first_byte_is_an_http_error(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    body = json.loads((WIRE / "anthropic" / "error-529.json").read_text())["response"]
    upstream.enqueue(JsonReply(body["body"], status=body["status"]))
    with pytest.raises(openai.InternalServerError) as caught:
        collect(client, model=CLAUDE, input="hello")
    assert caught.value.status_code == 503


def test_previous_response_id_works_from_a_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(SseReply(stream_chunks("deepseek-chat", ["Hi ", "Ada"], usage=True)))
    first = collect(client, model=DEEPSEEK, input="I am Ada.")[-1].response
    client.responses.create(model=DEEPSEEK, input="Who am I?", previous_response_id=first.id)
    assert [m["content"] for m in upstream.last.json["messages"]] == ["I am Ada.", "Hi Ada", "Who am I?"]
