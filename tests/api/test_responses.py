"""POST /v1/responses (not streamed) through the running gateway with the openai SDK, on the three wires.

DeepSeek speaks the OpenAI wire, anthropic/claude-sonnet the Anthropic one, google/gemini-2.5-flash Gemini's; each
upstream is the shared fake, scripted with the wire fixtures in tests/fakes/wire.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aipower.providers.gemini.response import call_id_prefix
from tests.api.conftest import dedicated_client
from tests.conftest import Gateway, create_key
from tests.fakes.upstream import FakeUpstream, JsonReply, completion

WIRE = Path(__file__).parents[1] / "fakes" / "wire"
DEEPSEEK, CLAUDE, GEMINI = "deepseek/deepseek-chat", "anthropic/claude-sonnet", "google/gemini-2.5-flash"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def fixture(wire: str, case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WIRE / wire / f"{case}.json").read_text("utf-8"))
    return data


def anthropic_reply(case: str) -> JsonReply:
    return JsonReply(fixture("anthropic", case)["response"]["body"])


def gemini_reply(case: str) -> JsonReply:
    return JsonReply(fixture("gemini", case)["gemini_response"])


def deepseek_call(call_id: str = "call_abc") -> JsonReply:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    return JsonReply(completion("deepseek-chat", "", tool_calls=[call]))


def balance(http: httpx.Client) -> Decimal:
    value: Decimal = json.loads(http.get("/balance").text, parse_float=Decimal)["balance_usd"]
    return value


@pytest.fixture
def other_client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    """A key of another user on the same gateway."""
    secret, _ = create_key(gateway.database_url, "responses-other@example.com")
    with openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0) as sdk:
        yield sdk


def test_text_answer_is_a_complete_response_object(
    client: openai.OpenAI, http: httpx.Client, upstream: FakeUpstream
) -> None:
    before = balance(http)
    raw = client.responses.with_raw_response.create(
        model=DEEPSEEK,
        input="Say hello",
        instructions="Be brief.",
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        metadata={"ticket": "T-1"},
    )
    response = raw.parse()
    body = raw.http_response.json()

    assert response.output_text == "Hello from the fake upstream."
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.status, response.model, response.error, response.incomplete_details) == (
        "completed",
        DEEPSEEK,
        None,
        None,
    )
    assert (response.instructions, response.metadata, response.temperature, response.top_p) == (
        "Be brief.",
        {"ticket": "T-1"},
        0.5,
        0.9,
    )
    assert (response.max_output_tokens, response.store, response.tool_choice, response.tools) == (50, True, "auto", [])
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert [part.model_dump() for part in message.content] == [
        {"type": "output_text", "text": "Hello from the fake upstream.", "annotations": [], "logprobs": []}
    ]
    cost = json.loads(raw.http_response.text, parse_float=Decimal)["usage"]["cost"]
    body["usage"].pop("cost")
    assert body["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 19,
    }
    assert cost > 0 and cost == Decimal(raw.http_response.headers["x-aipower-cost"])
    sent = upstream.last.json
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (50, 0.5, 0.9)
    assert "metadata" not in sent  # stored and echoed, never sent upstream
    assert before - balance(http) == cost  # billed like any call, at the price reported


def test_anthropic_answer(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(anthropic_reply("plain-text"))
    response = client.responses.create(model=CLAUDE, input="hello", instructions="You are terse.")
    assert response.output_text == "Hi there! How are you doing today? Is there anything I can help you with?"
    assert response.model == CLAUDE and response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (8, 21)
    sent = upstream.last
    assert sent.path == "/anthropic/v1/messages"
    assert sent.json["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
    assert sent.json["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]


def test_cached_tokens_are_the_providers_cache_reads(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """Anthropic counts cache reads (1111) and writes (418) apart from input_tokens (3); the prompt is all three."""
    upstream.enqueue(anthropic_reply("cached-prompt"))
    response = client.responses.create(model=CLAUDE, input="hello")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens) == (3 + 1111 + 418, 1111)


def test_gemini_answer(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(gemini_reply("plain-text"))
    response = client.responses.create(
        model=GEMINI, input=[{"role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]}]
    )
    assert response.output_text == "The capital of France is **Paris**."
    assert upstream.last.path.startswith("/google/v1beta/models/gemini-2.5-flash")
    assert upstream.last.json["contents"] == [{"role": "user", "parts": [{"text": "Capital of France?"}]}]


def test_image_input_reaches_the_upstream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    client.responses.create(
        model=DEEPSEEK,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                ],
            }
        ],
    )
    assert upstream.last.json["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
    ]


def test_multi_turn_replays_the_whole_chain(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    first = client.responses.create(model=DEEPSEEK, input="My name is Ada.", instructions="Not carried over.")
    upstream.enqueue(JsonReply(completion("deepseek-chat", "Your name is Ada.")))
    second = client.responses.create(model=DEEPSEEK, input="What is my name?", previous_response_id=first.id)
    third = client.responses.create(
        model=DEEPSEEK, input="And again?", previous_response_id=second.id, instructions="Be kind."
    )

    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    assert upstream.last.json["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello from the fake upstream."},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "Your name is Ada."},
        {"role": "user", "content": "And again?"},
    ]


def second_request(upstream: FakeUpstream, model: str) -> Any:
    """The tool result as the provider received it on the second turn."""
    sent = upstream.last.json
    match model:
        case "deepseek/deepseek-chat":
            return [sent["messages"][1]["tool_calls"][0]["id"], sent["messages"][2]]
        case "anthropic/claude-sonnet":
            return [sent["messages"][1]["content"][-1]["id"], sent["messages"][2]["content"][0]]
        case _:
            return [sent["contents"][1]["parts"][-1]["functionCall"], sent["contents"][2]["parts"][0]]


ROUND_TRIPS = {
    DEEPSEEK: (
        deepseek_call,
        lambda: JsonReply(completion("deepseek-chat", "It is sunny in Paris.")),
        "call_abc",
        ["call_abc", {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}],
    ),
    CLAUDE: (
        lambda: anthropic_reply("tool-call"),
        lambda: anthropic_reply("plain-text"),
        "toolu_01Dxp8hdnkA8bsrVJJ8LB9q1",
        [
            "toolu_01Dxp8hdnkA8bsrVJJ8LB9q1",
            {"type": "tool_result", "tool_use_id": "toolu_01Dxp8hdnkA8bsrVJJ8LB9q1", "content": "sunny"},
        ],
    ),
    GEMINI: (
        lambda: gemini_reply("tool-call"),
        lambda: gemini_reply("plain-text"),
        f"{call_id_prefix(fixture('gemini', 'tool-call')['gemini_response']['responseId'], 0)}0",  # made up: not sent
        [
            {"name": "get_weather", "args": {"city": "Paris"}},
            {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}},
        ],
    ),
}


@pytest.mark.parametrize("model", sorted(ROUND_TRIPS))
def test_function_call_round_trip(client: openai.OpenAI, upstream: FakeUpstream, model: str) -> None:
    call_reply, final_reply, call_id, expected = ROUND_TRIPS[model]
    upstream.enqueue(call_reply())
    first = client.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])  # type: ignore[list-item]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert (calls[0].call_id, calls[0].name, json.loads(calls[0].arguments)) == (
        call_id,
        "get_weather",
        {"city": "Paris"},
    )
    assert calls[0].status == "completed" and calls[0].id and calls[0].id.startswith("fc_")
    assert first.tools[0].model_dump(exclude_none=True) == WEATHER_TOOL

    upstream.enqueue(final_reply())
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.output_text
    assert second_request(upstream, model) == expected


def test_function_call_items_can_be_sent_back_without_storage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(deepseek_call())
    first = client.responses.create(model=DEEPSEEK, input="Weather?", tools=[WEATHER_TOOL], store=False)  # type: ignore[list-item]
    client.responses.create(
        model=DEEPSEEK,
        input=[
            {"role": "user", "content": "Weather?"},
            *[item.model_dump(exclude_none=True) for item in first.output],  # type: ignore[misc]
            {"type": "function_call_output", "call_id": "call_abc", "output": "sunny"},
        ],
        tool_choice={"type": "function", "name": "get_weather"},
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        store=False,
    )
    sent = upstream.last.json
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_json_schema_output_via_text_format(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    schema = fixture("anthropic", "json-schema")["openai_request"]["response_format"]["json_schema"]
    text_format = {"type": "json_schema", "name": schema["name"], "schema": schema["schema"], "strict": True}
    # OpenAI: DeepSeek has no json_schema (docs/providers/openai-compatible.md), so the gateway refuses it there
    upstream.enqueue(JsonReply(completion("gpt-4o-mini", '{"city":"London"}')))
    response = client.responses.create(model="openai/gpt-4o-mini", input="A city", text={"format": text_format})  # type: ignore[typeddict-item]
    assert json.loads(response.output_text) == {"city": "London"}
    assert upstream.last.json["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.model_dump(by_alias=True, exclude_none=True) == text_format

    upstream.enqueue(anthropic_reply("json-schema"))
    answer = client.responses.create(model=CLAUDE, input="A city", text={"format": text_format})  # type: ignore[typeddict-item]
    assert json.loads(answer.output_text)["city"] == "London"


@pytest.mark.parametrize("model", [DEEPSEEK, CLAUDE])
def test_max_tokens_cut_is_incomplete(client: openai.OpenAI, upstream: FakeUpstream, model: str) -> None:
    if model == CLAUDE:
        upstream.enqueue(anthropic_reply("max-tokens"))
    else:
        upstream.enqueue(JsonReply(completion("deepseek-chat", "Waves roll in", finish_reason="length")))
    response = client.responses.create(model=model, input="Write a poem about the sea.", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Waves roll in"
    assert response.output[-1].status == "incomplete"


def test_reasoning_item_and_its_signature_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    body = fixture("anthropic", "reasoning")["response"]["body"]
    upstream.enqueue(JsonReply(body))
    first = client.responses.create(model=CLAUDE, input="What is 1+1?", reasoning={"effort": "minimal"})
    reasoning = first.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None and reasoning.content[0].text == body["content"][0]["thinking"]
    assert reasoning.encrypted_content == body["content"][0]["signature"]
    assert first.output_text == "Two" and first.reasoning is not None and first.reasoning.effort == "minimal"
    assert upstream.last.json["thinking"]["type"] == "enabled"

    upstream.enqueue(anthropic_reply("plain-text"))
    client.responses.create(model=CLAUDE, input="And 2+2?", previous_response_id=first.id)
    assistant = upstream.last.json["messages"][1]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": body["content"][0]["thinking"],
        "signature": body["content"][0]["signature"],
    }


def test_retrieve_delete_and_input_items(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    created = client.responses.create(
        model=DEEPSEEK,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        ],
    )
    assert client.responses.retrieve(created.id).model_dump() == created.model_dump()

    items = list(client.responses.input_items.list(created.id))
    assert [(i.type, i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr]
        ("message", "user", "Hello"),
        ("message", "developer", "Answer in French."),
    ]  # newest first, as OpenAI lists them
    assert all(i.id.startswith("msg_") for i in items)  # type: ignore[union-attr]
    ascending = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert [i.role for i in ascending.data] == ["developer"] and ascending.has_more  # type: ignore[union-attr]

    deleted = client.responses.with_raw_response.delete(created.id).http_response.json()
    assert deleted == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.code == "response_not_found"


def test_input_items_pages_follow_the_cursor(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """The SDK's pagination sends `after` as the last_id of the page before, in either order."""
    texts = ["one", "two", "three"]
    created = client.responses.create(model=DEEPSEEK, input=[{"role": "user", "content": t} for t in texts])
    for order, expected in (("asc", texts), ("desc", texts[::-1])):
        pages = client.responses.input_items.list(created.id, order=order, limit=1)
        assert [i.content[0].text for i in pages] == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"order": "sideways"}, "order"),
        ({"after": "msg_nope"}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ],
)
def test_input_items_query_out_of_range_is_400(
    client: openai.OpenAI, upstream: FakeUpstream, query: dict[str, Any], param: str
) -> None:
    created = client.responses.create(model=DEEPSEEK, input="hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(created.id, **query)
    assert (caught.value.param, caught.value.code) == (param, "invalid_value")


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=DEEPSEEK, input="hi", store=False)
    assert response.store is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=DEEPSEEK, input="again", previous_response_id=response.id)
    assert caught.value.param == "previous_response_id"


def test_another_users_response_is_404(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    mine = client.responses.create(model=DEEPSEEK, input="secret")
    calls = [
        lambda: other_client.responses.retrieve(mine.id),
        lambda: other_client.responses.delete(mine.id),
        lambda: list(other_client.responses.input_items.list(mine.id)),
        lambda: other_client.responses.create(model=DEEPSEEK, input="x", previous_response_id=mine.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "response_not_found"
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        ({"input": "hi", "service_tier": "turbo"}, "service_tier"),
        ({"input": "hi", "safety_identifier": "x" * 65}, "safety_identifier"),
        ({"input": "hi", "top_logprobs": 21}, "top_logprobs"),
        ({"input": "hi", "prompt_cache_retention": "forever"}, "prompt_cache_retention"),
        ({"input": "hi", "max_tool_calls": "3"}, "max_tool_calls"),
        ({}, "input"),
    ],
)
def test_bad_requests_are_400_with_param(
    http: httpx.Client, upstream: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    reply = http.post("/responses", json={"model": DEEPSEEK, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_documented_request_fields_are_accepted(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """CreateResponse fields beyond the core: Codex-style clients send prompt_cache_key on every call. What chat
    completions forwards goes upstream under the same name; the rest is validated and echoed."""
    response = client.responses.create(
        model=DEEPSEEK,
        input="hi",
        prompt_cache_key="thread-7",
        prompt_cache_retention="24h",
        safety_identifier="user-5f2a",
        service_tier="flex",
        top_logprobs=2,
        max_tool_calls=3,
        background=False,
    )
    assert response.status == "completed" and response.background is False
    echoed = (response.prompt_cache_key, response.safety_identifier, response.top_logprobs, response.max_tool_calls)
    assert echoed == ("thread-7", "user-5f2a", 2, 3)
    sent = upstream.last.json
    forwarded = ("prompt_cache_key", "prompt_cache_retention", "safety_identifier", "service_tier")
    assert [sent.get(name) for name in forwarded] == ["thread-7", "24h", "user-5f2a", "flex"]
    assert not {"top_logprobs", "max_tool_calls", "background", "logprobs"} & sent.keys()


def test_background_true_is_refused(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=DEEPSEEK, input="hi", background=True)
    assert caught.value.param == "background"
    assert "not supported by this gateway" in caught.value.message
    assert upstream.requests == []


def call_item(call_id: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": arguments}


def output_item(call_id: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": "sunny"}


@pytest.mark.parametrize(
    ("model", "params", "param"),
    [
        (CLAUDE, {"input": [{"role": "user", "content": "hi"}, call_item("c1", "not json"), output_item("c1")]}, 1),
        (
            GEMINI,
            {
                "instructions": "Be brief.",  # a system message the adapter counts, the caller does not
                "input": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Checking."},  # one assistant turn with the two calls
                    call_item("c1", '{"city": "Paris"}'),
                    call_item("c2", "{"),
                    output_item("c1"),
                    output_item("c2"),
                ],
            },
            3,
        ),
    ],
)
def test_a_bad_input_item_is_named_as_sent(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, params: dict[str, Any], param: int
) -> None:
    """The adapter reports `messages[i].tool_calls[j].function.arguments`; the caller sent input items."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, **params)
    assert caught.value.param == f"input[{param}].arguments"
    assert upstream.requests == []


def test_a_tool_result_for_no_call_is_named_as_sent(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=GEMINI, input=[{"role": "user", "content": "hi"}, output_item("nope")])
    assert caught.value.param == "input[1].call_id"


def test_a_bad_item_from_the_chain_is_named_previous_response_id(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "Paris"}}
    upstream.enqueue(JsonReply(completion("deepseek-chat", "", tool_calls=[call])))
    first = client.responses.create(model=DEEPSEEK, input="Weather?", tools=[WEATHER_TOOL])
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CLAUDE, previous_response_id=first.id, input=[output_item("c1")])
    assert caught.value.param == "previous_response_id"
    assert len(upstream.requests) == 1


def test_infinity_in_a_tool_schema_is_400(http: httpx.Client, upstream: FakeUpstream) -> None:
    """JSON has no Infinity; the parser let it through, and the schema reached the provider with null in its place."""
    tool = b'{"type": "function", "name": "f", "parameters": {"maximum": Infinity}}'
    body = b'{"model": "%s", "input": "hi", "tools": [%s]}' % (DEEPSEEK.encode(), tool)
    reply = http.post("/responses", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "tools[0].parameters.maximum"
    assert upstream.requests == []


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nope/nothing", input="hi")
    assert caught.value.code == "model_not_found"


def test_signatures_stay_with_the_model_that_made_them(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    body = fixture("anthropic", "reasoning")["response"]["body"]
    upstream.enqueue(JsonReply(body), gemini_reply("plain-text"))
    first = client.responses.create(model=CLAUDE, input="What is 1+1?", reasoning={"effort": "minimal"})
    client.responses.create(model=GEMINI, input="And 2+2?", previous_response_id=first.id)
    sent = upstream.last
    assert sent.path.startswith("/google/")
    assert body["content"][0]["signature"] not in sent.body.decode()  # Gemini would reject Anthropic's signature
    assert {"text": "Two"} in sent.json["contents"][1]["parts"]


def thinking_then_tool_call() -> dict[str, Any]:
    """A Claude turn with thinking on: a signed thinking block, then a tool_use."""
    thinking = fixture("anthropic", "reasoning")["response"]["body"]["content"][0]
    turn = fixture("anthropic", "tool-call")["response"]["body"]
    return {**turn, "content": [thinking, *[b for b in turn["content"] if b["type"] == "tool_use"]]}


def test_a_smart_route_gives_the_signature_back_to_the_model_that_made_it(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """auto-code is served by a Claude model; asked again for auto-code, that model gets its signed thinking back (with
    thinking on, Anthropic refuses a tool loop whose assistant turn does not open with it)."""
    turn = thinking_then_tool_call()
    upstream.enqueue(JsonReply(turn), anthropic_reply("plain-text"))
    first = client.responses.create(
        model="auto-code", input="Weather in Paris?", tools=[WEATHER_TOOL], reasoning={"effort": "low"}
    )
    assert first.model.startswith("anthropic/")
    call = next(item for item in first.output if item.type == "function_call")
    client.responses.create(
        model="auto-code",
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        reasoning={"effort": "low"},
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    sent = upstream.last.json
    assert sent["model"] == upstream.requests[0].json["model"]
    assert sent["messages"][1]["content"][0] == turn["content"][0]  # thinking, signature and all
    assert "thinking" in sent


def test_a_failover_target_does_not_get_another_models_signature(
    gateway: Gateway, upstream_url: str, upstream: FakeUpstream
) -> None:
    """The model that serves is known only per attempt: auto-best's Claude Opus made the signature, is overloaded on
    the next turn, and the Gemini model the route fails over to gets the reasoning without it."""
    turn = thinking_then_tool_call()
    signature = turn["content"][0]["signature"]
    overloaded = fixture("anthropic", "error-529")["response"]
    with dedicated_client(gateway, upstream_url) as sdk:  # breakers of its own
        upstream.enqueue(JsonReply(turn))
        first = sdk.responses.create(model="auto-best", input="Weather in Paris?", tools=[WEATHER_TOOL])
        assert first.model == "anthropic/claude-opus"
        call = next(item for item in first.output if item.type == "function_call")
        upstream.reset()
        upstream.enqueue(
            JsonReply(overloaded["body"], status=overloaded["status"]),
            JsonReply({"error": {"message": "down", "type": "server_error"}}, status=503),
            gemini_reply("plain-text"),
        )
        second = sdk.responses.create(
            model="auto-best",
            previous_response_id=first.id,
            tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
    assert second.model == "google/gemini-2.5-pro"
    claude, _, gemini = (r.body.decode() for r in upstream.requests)
    assert signature in claude and signature not in gemini


def test_reasoning_the_caller_sends_back_goes_to_no_other_model(
    gateway: Gateway, upstream_url: str, upstream: FakeUpstream
) -> None:
    """store: false, the output appended to the next input (Codex's way): Claude's signed reasoning came back with no
    origin and went to whatever model served the turn, Gemini included (the last review's find)."""
    turn = thinking_then_tool_call()
    signature = turn["content"][0]["signature"]
    overloaded = fixture("anthropic", "error-529")["response"]
    with dedicated_client(gateway, upstream_url) as sdk:  # breakers of its own
        upstream.enqueue(JsonReply(turn))
        first = sdk.responses.create(model="auto-best", input="Weather in Paris?", tools=[WEATHER_TOOL], store=False)
        call = next(item for item in first.output if item.type == "function_call")
        upstream.reset()
        upstream.enqueue(
            JsonReply(overloaded["body"], status=overloaded["status"]),
            JsonReply({"error": {"message": "down", "type": "server_error"}}, status=503),
            gemini_reply("plain-text"),
        )
        replay = [item.model_dump(exclude_none=True) for item in first.output]
        second = sdk.responses.create(
            model="auto-best",
            store=False,
            tools=[WEATHER_TOOL],
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                *replay,
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
        )
    assert second.model == "google/gemini-2.5-pro"
    assert all(signature not in r.body.decode() for r in upstream.requests)


def test_an_id_with_a_nul_is_simply_not_found(gateway: Gateway) -> None:
    """No id holds a NUL, and PostgreSQL refuses one in a query: a 404 like any unknown id, not a 500."""
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {gateway.api_key}"}) as http:
        answers = [
            http.get("/responses/a%00b"),
            http.get("/responses/a%00b/input_items"),
            http.delete("/responses/a%00b"),
            http.get("/generation/a%00b"),
            http.post(
                "/responses", json={"model": "deepseek/deepseek-chat", "input": "hi", "previous_response_id": "a\x00b"}
            ),
        ]
    assert [a.status_code for a in answers] == [404] * 5, [a.text for a in answers]
