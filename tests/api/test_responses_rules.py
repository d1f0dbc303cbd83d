"""POST /v1/responses: what a request must satisfy beyond its field types, through the running gateway.

The openai SDK sends what it can; httpx sends the values its types refuse. Every refusal is a 400 naming the field,
and nothing reaches the upstream.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream

DEEPSEEK = "deepseek/deepseek-chat"


@pytest.mark.parametrize("empty", ["", []])
def test_an_empty_input_is_400(client: openai.OpenAI, upstream: FakeUpstream, empty: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=DEEPSEEK, input=empty)
    assert caught.value.param == "input"
    assert "nothing for the model to answer" in caught.value.message and "previous_response_id" in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize("empty", ["", []])
def test_an_empty_input_continues_a_stored_conversation(
    client: openai.OpenAI, upstream: FakeUpstream, empty: Any
) -> None:
    """previous_response_id supplies the conversation: the model answers it as it stands, with no empty user turn."""
    first = client.responses.create(model=DEEPSEEK, input="Tell me a story.")
    second = client.responses.create(model=DEEPSEEK, input=empty, previous_response_id=first.id)
    assert second.status == "completed"
    assert upstream.last.json["messages"] == [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Hello from the fake upstream."},
    ]
    assert list(client.responses.input_items.list(second.id)) == []


def test_raw_http_empty_input_names_input(http: httpx.Client, upstream: FakeUpstream) -> None:
    reply = http.post("/responses", json={"model": DEEPSEEK, "input": []})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "input",
        "code": "empty_array",
    }
    assert upstream.requests == []


def test_an_unknown_include_value_names_its_index(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {"model": DEEPSEEK, "input": "hi", "include": ["reasoning.encrypted_content", "bogus"]}
    reply = http.post("/responses", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("include[1]", "invalid_value")
    assert "'reasoning.encrypted_content'" in error["message"]  # the values it takes
    assert upstream.requests == []


def test_every_documented_include_value_is_accepted(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """The contract's IncludeEnum: what the gateway cannot produce (hosted tools' results, logprobs) changes nothing."""
    documented: Any = [
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    ]
    response = client.responses.create(model=DEEPSEEK, input="hi", include=documented)
    assert response.status == "completed"
    assert "include" not in upstream.last.json


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({f"k{i}": "v" for i in range(17)}, "it has 17 pairs; at most 16"),
        ({"k" * 65: "v"}, "has 65 characters; keys have at most 64"),
        ({"note": "x" * 513}, "the value of 'note' has 513 characters; values have at most 512"),
    ],
)
def test_metadata_beyond_the_contracts_limits_is_400(
    client: openai.OpenAI, upstream: FakeUpstream, metadata: dict[str, str], reason: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=DEEPSEEK, input="hi", metadata=metadata)
    assert caught.value.param == "metadata"
    assert reason in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize(("value", "kind"), [(1, "a number"), (None, "null"), ({"a": "b"}, "an object")])
def test_a_metadata_value_that_is_no_string_is_400(
    http: httpx.Client, upstream: FakeUpstream, value: Any, kind: str
) -> None:
    reply = http.post("/responses", json={"model": DEEPSEEK, "input": "hi", "metadata": {"a": value}})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "metadata"
    assert f"the value of 'a' is {kind}; values are strings" in error["message"]
    assert upstream.requests == []


def test_metadata_at_the_contracts_limits_is_kept(client: openai.OpenAI) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    response = client.responses.create(model=DEEPSEEK, input="hi", metadata=metadata)
    assert client.responses.retrieve(response.id).metadata == metadata


WEATHER: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@pytest.mark.parametrize(
    ("tools", "choice", "reason"),
    [
        ([WEATHER], {"type": "function", "name": "get_time"}, "'get_time' is not in 'tools' (which has 'get_weather')"),
        ([], {"type": "function", "name": "get_time"}, "'get_time' is not in 'tools' (which has no functions)"),
        ([], "required", "'required' needs at least one function in 'tools'"),
    ],
)
def test_a_tool_choice_the_tools_cannot_meet_is_400(
    client: openai.OpenAI, upstream: FakeUpstream, tools: Any, choice: Any, reason: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=DEEPSEEK, input="hi", tools=tools, tool_choice=choice)
    assert caught.value.param == "tool_choice"
    assert reason in caught.value.message
    assert upstream.requests == []


def test_a_tool_choice_naming_a_tool_reaches_the_upstream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    choice: Any = {"type": "function", "name": "get_weather"}
    response = client.responses.create(model=DEEPSEEK, input="hi", tools=[WEATHER], tool_choice=choice)
    assert response.tool_choice.model_dump() == choice  # type: ignore[union-attr]
    assert upstream.last.json["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
