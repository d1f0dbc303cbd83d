"""aipower/providers/openai_chat.py through the Adapter API, on real recorded exchanges (no sockets).

The fixtures in tests/fakes/wire/openai/ are copies of /work/shared/recorded files (pydantic-ai's live
cassettes; `source_path` and `recorded_file` say where each came from). Response bodies are fed verbatim;
SSE bodies are cut into small chunks to exercise the decoder as a socket would.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from aipower import sse
from aipower.api.openai_chat_wire import parse_request
from aipower.catalog import Catalog, Target, load
from aipower.errors import UpstreamError
from aipower.messages import (
    ChatRequest,
    Finish,
    Image,
    Message,
    Reasoning,
    ReasoningDelta,
    ResponseFormat,
    StreamEvent,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from aipower.providers.openai_chat import OpenAIChat

WIRE = Path(__file__).parent.parent / "fakes" / "wire" / "openai"
KEY = "sk-test-0123456789abcdef"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WIRE / f"{name}.json").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def adapter(catalog: Catalog, provider_id: str, **quirks: Any) -> OpenAIChat:
    provider = catalog.providers[provider_id]
    if quirks:
        provider = dataclasses.replace(provider, quirks=dataclasses.replace(provider.quirks, **quirks))
    return OpenAIChat(provider)


def target(catalog: Catalog, model_id: str, upstream: str | None = None, **quirks: Any) -> Target:
    """A target for a catalog model; `quirks` replace the model's resolved quirks at its provider."""
    model = catalog.models[model_id]
    provider = catalog.providers[model.provider]
    if upstream is not None:
        model = dataclasses.replace(model, upstream=upstream)
    if quirks:
        resolved = dataclasses.replace(model.quirks_at(provider), **quirks)
        model = dataclasses.replace(model, quirks=((provider.id, resolved),))
    return Target(model=model, provider=provider, base_url=provider.base_url, api_key=KEY)


def user(text: str) -> Message:
    return Message(role="user", parts=(Text(text),))


def build_body(catalog: Catalog, request: ChatRequest, model_id: str, **quirks: Any) -> dict[str, Any]:
    model = catalog.models[model_id]
    built = adapter(catalog, model.provider).build_request(request, target(catalog, model_id, **quirks))
    body: dict[str, Any] = orjson.loads(built.body)
    return body


# ---------------------------------------------------------------- build_request


CAPITAL_TOOL = Tool(
    name="get_capital",
    description="",
    parameters_schema={
        "additionalProperties": False,
        "properties": {"country": {"type": "string"}},
        "required": ["country"],
        "type": "object",
    },
    strict=True,
)


def test_build_request_reproduces_a_recorded_openai_stream_request(catalog: Catalog) -> None:
    case = recorded("openai-stream-text")
    call = ToolCall("call_ZR5UUuTt3pf61kjwAJIYdVMj", "get_capital", '{"country":"UK"}')
    request = ChatRequest(
        model="openai/gpt-4o-mini",
        messages=(
            user("What is the capital of the UK? Use the tool, then answer."),
            Message(role="assistant", parts=(call,)),
            Message(role="tool", parts=(Text("London"),), tool_call_id="call_ZR5UUuTt3pf61kjwAJIYdVMj"),
        ),
        tools=(CAPITAL_TOOL,),
        tool_choice="auto",
        stream=True,
    )
    assert build_body(catalog, request, "openai/gpt-4o-mini") == case["request"]["body"]


def test_build_request_reproduces_a_recorded_zhipu_request_with_an_extra_field(catalog: Catalog) -> None:
    case = recorded("zhipu-reasoning")
    request = ChatRequest(
        model="zhipu/glm-5.1", messages=(user("What is 2 + 2?"),), extra={"thinking": {"clear_thinking": False}}
    )
    built = adapter(catalog, "zhipu").build_request(request, target(catalog, "zhipu/glm-5.1", upstream="glm-4.7"))
    expected = {k: v for k, v in case["request"]["body"].items() if k != "stream"}  # stream=false is the default
    assert orjson.loads(built.body) == expected


@pytest.mark.parametrize(
    ("model_id", "url"),
    [
        ("openai/gpt-4o-mini", "https://api.openai.com/v1/chat/completions"),
        ("deepseek/deepseek-chat", "https://api.deepseek.com/chat/completions"),
        ("zhipu/glm-4-flash", "https://open.bigmodel.cn/api/paas/v4/chat/completions"),
        ("qwen/qwen-turbo", "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions"),
    ],
)
def test_url_model_and_bearer_header(catalog: Catalog, model_id: str, url: str) -> None:
    model = catalog.models[model_id]
    built = adapter(catalog, model.provider).build_request(
        ChatRequest(model=model_id, messages=(user("hi"),)), target(catalog, model_id)
    )
    assert built.url == url
    assert built.headers["Authorization"] == f"Bearer {KEY}"
    assert built.headers["Content-Type"] == "application/json"
    assert orjson.loads(built.body)["model"] == model.upstream


@pytest.mark.parametrize(
    ("model_id", "field", "absent"),
    [
        ("openai/gpt-5", "max_completion_tokens", "max_tokens"),
        ("deepseek/deepseek-chat", "max_tokens", "max_completion_tokens"),
        ("moonshot/kimi-k2.5", "max_tokens", "max_completion_tokens"),
    ],
)
def test_max_tokens_field_quirk(catalog: Catalog, model_id: str, field: str, absent: str) -> None:
    body = build_body(catalog, ChatRequest(model=model_id, messages=(user("hi"),), max_tokens=77), model_id)
    assert body[field] == 77
    assert absent not in body


@pytest.mark.parametrize(
    ("model_id", "role"),
    [("openai/gpt-5", "developer"), ("deepseek/deepseek-chat", "system"), ("qwen/qwen-plus", "system")],
)
def test_developer_role_becomes_system_where_unsupported(catalog: Catalog, model_id: str, role: str) -> None:
    request = ChatRequest(model=model_id, messages=(Message(role="developer", parts=(Text("be brief"),)), user("hi")))
    assert build_body(catalog, request, model_id)["messages"][0] == {"role": role, "content": "be brief"}


def test_drop_quirk_removes_fields(catalog: Catalog) -> None:
    request = ChatRequest(
        model="deepseek/deepseek-chat",
        messages=(user("hi"),),
        seed=7,
        user="u-1",
        temperature=0.5,
        extra={"logit_bias": {"1": 2}, "top_logprobs": 3},
    )
    body = build_body(
        catalog, request, "deepseek/deepseek-chat", drop=frozenset({"seed", "user", "logit_bias"}), reject=frozenset()
    )
    assert "seed" not in body and "user" not in body and "logit_bias" not in body
    assert body["temperature"] == 0.5
    assert body["top_logprobs"] == 3


def test_stream_asks_for_usage(catalog: Catalog) -> None:
    request = ChatRequest(model="deepseek/deepseek-chat", messages=(user("hi"),), stream=True)
    body = build_body(catalog, request, "deepseek/deepseek-chat")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_usage_quirk_off_sends_no_stream_options(catalog: Catalog) -> None:
    request = ChatRequest(model="deepseek/deepseek-chat", messages=(user("hi"),), stream=True)
    body = build_body(catalog, request, "deepseek/deepseek-chat", stream_usage=False)
    assert body["stream"] is True
    assert "stream_options" not in body


def test_a_non_streamed_request_has_no_stream_fields(catalog: Catalog) -> None:
    body = build_body(
        catalog, ChatRequest(model="deepseek/deepseek-chat", messages=(user("hi"),)), "deepseek/deepseek-chat"
    )
    assert "stream" not in body and "stream_options" not in body


def test_extra_fields_are_forwarded_verbatim(catalog: Catalog) -> None:
    extra = {
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100},
        "reasoning_effort": "low",
        "metadata": {"team": "a"},
        "x_unknown_field": {"nested": [1, 2.5, None, "é"]},
    }
    request = ChatRequest(model="openai/gpt-5", messages=(user("hi"),), extra=extra)
    body = build_body(catalog, request, "openai/gpt-5")
    assert {k: body[k] for k in extra} == extra


def test_sampling_fields_and_stop(catalog: Catalog) -> None:  # OpenAI, the reference: every field passes
    request = ChatRequest(
        model="openai/gpt-4o-mini",
        messages=(user("hi"),),
        temperature=0.2,
        top_p=0.9,
        seed=42,
        n=2,
        user="end-user",
        stop=("END", "\n\n"),
    )
    body = build_body(catalog, request, "openai/gpt-4o-mini")
    assert (body["temperature"], body["top_p"], body["seed"], body["n"], body["user"]) == (0.2, 0.9, 42, 2, "end-user")
    assert body["stop"] == ["END", "\n\n"]


@pytest.mark.parametrize("model_id", ["openai/gpt-5", "qwen/qwen-plus", "doubao/doubao-pro-256k"])
def test_assistant_reasoning_is_not_sent_back_without_the_reasoning_history_quirk(
    catalog: Catalog, model_id: str
) -> None:
    call = ToolCall("c1", "get_weather", "{}")
    request = ChatRequest(
        model=model_id,
        messages=(
            user("2+2?"),
            Message(role="assistant", parts=(Reasoning("secret chain of thought", signature="sig"), Text("4"))),
            Message(role="assistant", parts=(call,)),
            Message(role="tool", parts=(Text("sunny"),), tool_call_id="c1"),
        ),
    )
    built = adapter(catalog, catalog.models[model_id].provider).build_request(request, target(catalog, model_id))
    assert orjson.loads(built.body)["messages"][1] == {"role": "assistant", "content": "4"}
    assert b"secret chain of thought" not in built.body
    assert b"reasoning_content" not in built.body


def caller_request(case: str, model_id: str) -> ChatRequest:
    """What an OpenAI SDK caller sends through the gateway: the recorded body, with the catalog's model id."""
    return parse_request(orjson.dumps({**recorded(case)["request"]["body"], "model": model_id}))


def test_build_request_reproduces_a_recorded_deepseek_thinking_tool_loop(catalog: Catalog) -> None:
    """Turn 3 of a deepseek-reasoner tool loop (answered 200): every tool-call turn's reasoning_content goes back,
    "" where a turn had none (https://api-docs.deepseek.com/guides/thinking_mode#tool-calls)."""
    case = recorded("deepseek-reasoner-tool-loop")
    request = caller_request("deepseek-reasoner-tool-loop", "deepseek/deepseek-reasoner")
    expected = {k: v for k, v in case["request"]["body"].items() if k != "stream"}  # stream=false is the default
    assert build_body(catalog, request, "deepseek/deepseek-reasoner") == expected
    assert case["response"]["status"] == 200


def test_build_request_reproduces_a_recorded_zhipu_preserved_thinking_turn(catalog: Catalog) -> None:
    case = recorded("zhipu-preserved-thinking")
    request = caller_request("zhipu-preserved-thinking", "zhipu/glm-5.1")
    expected = {k: v for k, v in case["request"]["body"].items() if k != "stream"}
    assert build_body(catalog, request, "zhipu/glm-5.1", upstream="glm-4.7") == expected
    assert case["response"]["status"] == 200


WEATHER = Tool(name="get_weather", parameters_schema={"type": "object", "properties": {"city": {"type": "string"}}})


def tool_loop(model_id: str, reasoning: tuple[Reasoning, ...], **fields: Any) -> ChatRequest:
    call = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    return ChatRequest(
        model=model_id,
        messages=(
            user("Weather in Paris?"),
            Message(role="assistant", parts=(*reasoning, call)),
            Message(role="tool", parts=(Text("sunny"),), tool_call_id="call_1"),
        ),
        tools=(WEATHER,),
        **fields,
    )


@pytest.mark.parametrize("model_id", ["moonshot/kimi-k2.5", "zhipu/glm-5.1", "deepseek/deepseek-reasoner"])
def test_a_tool_call_turns_reasoning_goes_back_where_the_provider_wants_it(catalog: Catalog, model_id: str) -> None:
    thought = (Reasoning("I should look it up.", signature="opaque"), Reasoning(" Paris, then."))
    sent = build_body(catalog, tool_loop(model_id, thought), model_id)["messages"][1]
    assert sent["reasoning_content"] == "I should look it up. Paris, then."
    assert sent["tool_calls"][0]["id"] == "call_1"


@pytest.mark.parametrize(
    ("model_id", "fields", "filled"),
    [
        ("moonshot/kimi-k2.5", {}, True),  # thinking is on by default
        ("moonshot/kimi-k2.5", {"extra": {"reasoning_effort": "high"}}, True),
        ("moonshot/kimi-k2.5", {"extra": {"reasoning_effort": "none"}}, False),  # thinking: disabled
        ("moonshot/kimi-k2.5", {"extra": {"thinking": {"type": "disabled"}}}, False),
        ("moonshot/moonshot-v1-8k", {}, False),  # does not think
        ("zhipu/glm-5.1", {}, False),  # reasoning_history "send": nothing to send, nothing sent
    ],
)
def test_moonshot_thinking_gets_empty_reasoning_on_a_tool_call_turn_without_any(
    catalog: Catalog, model_id: str, fields: dict[str, Any], filled: bool
) -> None:
    """Moonshot: 400 "thinking is enabled but reasoning_content is missing in assistant tool call message"."""
    sent = build_body(catalog, tool_loop(model_id, (), **fields), model_id)["messages"]
    assert (sent[1].get("reasoning_content") == "") is filled
    assert "reasoning_content" not in sent[1] or filled
    assert all("reasoning_content" not in m for m in (sent[0], sent[2]))


@pytest.mark.parametrize(
    ("model_id", "fields"),
    [
        ("deepseek/deepseek-chat", {}),
        ("moonshot/moonshot-v1-8k", {}),
        ("moonshot/kimi-k2.5", {"extra": {"reasoning_effort": "none"}}),
    ],
)
def test_a_model_that_does_not_think_gets_no_earlier_reasoning(
    catalog: Catalog, model_id: str, fields: dict[str, Any]
) -> None:
    """A conversation that began on a thinking model (or with thinking on) and goes on without it: the earlier
    reasoning stays out (it was sent to models that never asked for it: the last review's find)."""
    thought = (Reasoning("I should look it up."),)
    sent = build_body(catalog, tool_loop(model_id, thought, **fields), model_id)["messages"]
    assert all("reasoning_content" not in m for m in sent)


def test_a_reasoning_history_quirk_can_be_set_in_a_catalog_file(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.toml"
    extra.write_text('[providers.qwen]\nquirks = { reasoning_history = "send" }\n', "utf-8")
    catalog = load([extra])
    assert catalog.providers["qwen"].quirks.reasoning_history == "send"
    assert catalog.providers["openai"].quirks.reasoning_history == "drop"
    sent = build_body(catalog, tool_loop("qwen/qwen-plus", (Reasoning("think"),)), "qwen/qwen-plus")["messages"]
    assert sent[1]["reasoning_content"] == "think"


def test_assistant_tool_calls_without_text_have_null_content(catalog: Catalog) -> None:
    calls = (ToolCall("c1", "a", "{}"), ToolCall("c2", "b", '{"x":1}'))
    request = ChatRequest(model="qwen/qwen-plus", messages=(user("go"), Message(role="assistant", parts=calls)))
    assert build_body(catalog, request, "qwen/qwen-plus")["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "b", "arguments": '{"x":1}'}},
        ],
    }


def test_image_parts_and_named_tool_choice_and_json_schema(catalog: Catalog) -> None:
    message = Message(
        role="user",
        parts=(Text("what is this?"), Image("data:image/png;base64,AAAA", detail="low")),
        content_was_text=False,
    )
    request = ChatRequest(
        model="openai/gpt-4o-mini",
        messages=(message,),
        tools=(Tool(name="lookup"),),
        tool_choice="lookup",
        response_format=ResponseFormat(type="json_schema", name="answer", json_schema={"type": "object"}, strict=True),
    )
    body = build_body(catalog, request, "openai/gpt-4o-mini")
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]
    assert body["tools"] == [{"type": "function", "function": {"name": "lookup"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }


# ---------------------------------------------------------------- parse_response


@pytest.mark.parametrize(
    ("case", "provider_id", "parts", "finish", "usage"),
    [
        ("openai-text-cached", "openai", (Text("OK"),), "stop", Usage(4020, 4, 4012, 0)),
        (
            "openai-tool-call",
            "openai",
            (ToolCall("call_injwxidE5XUzmiKVfOH3rxf2", "get_weather", '{"city":"Paris"}'),),
            "tool_calls",
            Usage(130, 87, 0, 64),
        ),
    ],
)
def test_parse_recorded_openai_responses(
    catalog: Catalog, case: str, provider_id: str, parts: tuple[Any, ...], finish: str, usage: Usage
) -> None:
    body = recorded(case)["response"]["body_text"].encode()
    response = adapter(catalog, provider_id).parse_response(body)
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.parts == parts
    assert choice.finish_reason == finish
    assert response.usage == usage


def test_parse_recorded_deepseek_reasoner_tool_call(catalog: Catalog) -> None:
    body = recorded("deepseek-reasoner-tool-call")["response"]["body_text"].encode()
    response = adapter(catalog, "deepseek").parse_response(body)
    reasoning, text, call = response.choices[0].message.parts
    assert isinstance(reasoning, Reasoning)
    assert reasoning.text.startswith("The user wants to play a dice game.")
    assert reasoning.text.endswith("Let me load the capability first.")
    assert text == Text("Let me load the dice rolling capability!")
    assert call == ToolCall("call_00_sXqYgMESDht75NCLLZtt9804", "load_capability", '{"id": "DICE_ROLL"}')
    assert response.choices[0].finish_reason == "tool_calls"
    assert response.usage == Usage(563, 116, cached_input_tokens=512, reasoning_tokens=60)
    assert response.system_fingerprint == "fp_8b330d02d0_prod0820_fp8_kvcache_20260402"


def test_parse_recorded_zhipu_reasoning(catalog: Catalog) -> None:
    body = recorded("zhipu-reasoning")["response"]["body_text"].encode()
    response = adapter(catalog, "zhipu").parse_response(body)
    reasoning, text = response.choices[0].message.parts
    assert isinstance(reasoning, Reasoning)
    assert reasoning.text.startswith("\n1.  **Analyze the user's input**")
    assert text == Text("2 + 2 is 4.")
    assert response.choices[0].finish_reason == "stop"
    assert response.usage == Usage(13, 437, 0, 427)


def test_deepseek_cache_hit_tokens_count_as_cached() -> None:
    body = orjson.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64},
        }
    )
    response = OpenAIChat(load().providers["deepseek"]).parse_response(body)
    assert response.usage == Usage(100, 5, cached_input_tokens=64)
    assert response.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("raw", "finish"),
    [("sensitive", "content_filter"), ("function_call", "tool_calls"), ("content_filter", "content_filter")],
)
def test_provider_finish_reasons_map_onto_ours(catalog: Catalog, raw: str, finish: str) -> None:
    body = orjson.dumps({"choices": [{"message": {"content": ""}, "finish_reason": raw}]})
    assert adapter(catalog, "zhipu").parse_response(body).choices[0].finish_reason == finish


@pytest.mark.parametrize("body", [b"<html>502</html>", b"{}", b'{"choices": 3}', b"[]", b""])
def test_a_body_that_is_not_a_completion_is_a_bad_response(catalog: Catalog, body: bytes) -> None:
    with pytest.raises(UpstreamError) as raised:
        adapter(catalog, "deepseek").parse_response(body)
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (502, "upstream_bad_response", False)


# ---------------------------------------------------------------- parse_stream


async def chunked(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


async def parse_stream(adapter: OpenAIChat, raw: bytes, size: int) -> list[StreamEvent]:
    return [event async for event in adapter.parse_stream(sse.decode(chunked(raw, size)))]


@dataclass
class Streamed:
    """What a caller would assemble from the events."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, list[Any]] = field(default_factory=dict)  # call_index -> [id, name, arguments]
    finishes: list[Finish] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)


def assemble(events: list[StreamEvent]) -> Streamed:
    out = Streamed()
    for event in events:
        match event:
            case TextDelta(text=text):
                out.text += text
            case ReasoningDelta(text=text):
                out.reasoning += text
            case ToolCallDelta(call_index=i, id=call_id, name=name, arguments_fragment=fragment):
                call = out.calls.setdefault(i, [None, None, ""])
                call[0] = call[0] or call_id
                call[1] = call[1] or name
                call[2] += fragment
            case Finish():
                out.finishes.append(event)
            case UsageReport(usage=usage):
                out.usage.append(usage)
    return out


CHUNK_SIZES = [3, 64, 1 << 20]


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_stream_recorded_openai_text(catalog: Catalog, size: int) -> None:
    raw = recorded("openai-stream-text")["response"]["body_text"].encode()
    out = assemble(await parse_stream(adapter(catalog, "openai"), raw, size))
    assert out.text == "The capital of the UK is London."
    assert out.reasoning == "" and out.calls == {}
    assert out.finishes == [Finish(0, "stop")]
    assert out.usage == [Usage(78, 9, 0, 0)]


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_stream_recorded_openai_parallel_tool_calls(catalog: Catalog, size: int) -> None:
    raw = recorded("openai-stream-parallel-tools")["response"]["body_text"].encode()
    events = await parse_stream(adapter(catalog, "openai"), raw, size)
    fragments = [(e.call_index, e.arguments_fragment) for e in events if isinstance(e, ToolCallDelta)]
    assert fragments == [
        (0, ""),
        (0, '{"ci'),
        (0, 'ty": '),
        (0, '"Mexic'),
        (0, "o Ci"),
        (0, 'ty"}'),
        (1, ""),
        (1, "{}"),
    ]
    out = assemble(events)
    assert out.calls == {
        0: ["call_NS4iQj14cDFwc0BnrKqDHavt", "get_weather", '{"city": "Mexico City"}'],
        1: ["call_SkGkkGDvHQEEk0CGbnAh2AQw", "get_product_name", "{}"],
    }
    assert not any(isinstance(e, TextDelta) for e in events)  # content: null is not text
    assert out.finishes == [Finish(0, "tool_calls")]
    assert out.usage == [Usage(417, 44, 0, 0)]


async def test_stream_recorded_openai_trailing_chunk_without_usage(catalog: Catalog) -> None:
    raw = recorded("openai-stream-moderation")["response"]["body_text"].encode()
    out = assemble(await parse_stream(adapter(catalog, "openai"), raw, 50))
    assert out.text == "Paris."
    assert out.usage == [Usage(13, 11, 0, 0)]  # the moderation chunk's usage: null adds nothing


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_stream_recorded_deepseek_reasoner(catalog: Catalog, size: int) -> None:
    raw = recorded("deepseek-reasoner-stream")["response"]["body_text"].encode()
    out = assemble(await parse_stream(adapter(catalog, "deepseek"), raw, size))
    assert out.text == "Hello there! 😊 How can I help you today?"  # a 4-byte character split across chunks
    assert out.reasoning.startswith('Hmm, the user just said "Hello".')
    assert out.reasoning.endswith("they might not reply further - and that's okay too.")
    assert len(out.reasoning) == 882
    assert out.finishes == [Finish(0, "stop")]
    assert out.usage == [Usage(6, 212, cached_input_tokens=0, reasoning_tokens=198)]


@pytest.mark.parametrize("size", CHUNK_SIZES)
async def test_stream_recorded_zhipu_reasoning(catalog: Catalog, size: int) -> None:
    raw = recorded("zhipu-reasoning-stream")["response"]["body_text"].encode()
    out = assemble(await parse_stream(adapter(catalog, "zhipu"), raw, size))
    assert out.text == "4"
    assert out.reasoning.startswith("\n1.  **Analyze the User's Request:**")
    assert len(out.reasoning) == 2173
    assert out.finishes == [Finish(0, "stop")]
    assert out.usage == [Usage(13, 564, 0, 561)]


async def test_stream_ends_at_done_even_if_more_follows(catalog: Catalog) -> None:
    raw = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n'
        b'data: [DONE]\n\ndata: {"choices":[{"index":1,"delta":{"content":"b"}}]}\n\n'
    )
    assert await parse_stream(adapter(catalog, "deepseek"), raw, 8) == [TextDelta(0, "a"), Finish(0, "stop")]


def recorded_frames(name: str) -> list[bytes]:
    """A recorded stream's SSE frames, each with its blank line."""
    raw = recorded(name)["response"]["body_text"].encode()
    return [frame + b"\n\n" for frame in raw.replace(b"\r\n", b"\n").split(b"\n\n") if frame.strip()]


async def events_until_error(provider_id: str, raw: bytes, catalog: Catalog) -> tuple[list[StreamEvent], UpstreamError]:
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as caught:
        async for event in adapter(catalog, provider_id).parse_stream(sse.decode(chunked(raw, 64))):
            seen.append(event)
    return seen, caught.value


async def test_a_stream_closed_before_its_finish_reason_is_a_bad_response(catalog: Catalog) -> None:
    """The body ends cleanly mid-answer: what came is relayed, then a 502, as Anthropic's cut streams are."""
    frames = recorded_frames("openai-stream-text")
    finishing = next(i for i, f in enumerate(frames) if b'"finish_reason":"stop"' in f)
    seen, error = await events_until_error("openai", b"".join(frames[:finishing]), catalog)
    assert assemble(seen).text == "The capital of the UK is London." and assemble(seen).finishes == []
    assert (error.status, error.code, error.retryable) == (502, "upstream_bad_response", False)
    assert "ended before the message did" in error.message


async def test_done_without_a_finish_reason_is_a_bad_response_too(catalog: Catalog) -> None:
    raw = b'data: {"choices":[{"index":0,"delta":{"content":"The capital"}}]}\n\n' + sse.DONE_FRAME
    seen, error = await events_until_error("deepseek", raw, catalog)
    assert seen == [TextDelta(0, "The capital")] and error.status == 502


async def test_every_started_choice_must_finish(catalog: Catalog) -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"},
            {"index": 1, "delta": {"content": "b"}, "finish_reason": None},
        ]
    }
    seen, error = await events_until_error("qwen", sse.encode(orjson.dumps(chunk)) + sse.DONE_FRAME, catalog)
    assert Finish(0, "stop") in seen and error.status == 502


@pytest.mark.parametrize("name", ["openai-stream-text", "deepseek-reasoner-stream", "zhipu-reasoning-stream"])
async def test_a_finished_stream_needs_no_done(catalog: Catalog, name: str) -> None:
    """Some providers omit [DONE]: a finish_reason on every choice is the end, and usage after it still counts."""
    frames = [f for f in recorded_frames(name) if f.strip() != b"data: [DONE]"]
    out = assemble(await parse_stream(adapter(catalog, "openai"), b"".join(frames), 64))
    assert len(out.finishes) == 1 and len(out.usage) == 1


async def test_usage_inside_the_last_choice_is_reported(catalog: Catalog) -> None:
    chunk = {
        "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        ]
    }
    raw = sse.encode(orjson.dumps(chunk)) + sse.DONE_FRAME
    assert await parse_stream(adapter(catalog, "moonshot"), raw, 1000) == [Finish(0, "stop"), UsageReport(Usage(3, 2))]


async def test_a_chunk_with_a_null_error_is_an_ordinary_chunk(catalog: Catalog) -> None:
    """Some providers put "error": null in every chunk; only an error with something in it ends the stream."""
    raw = (
        b'data: {"choices":[{"index":0,"delta":{"content":"par"}}],"error":null}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"is"},"finish_reason":"stop"}],"error":null}\n\n'
        + sse.DONE_FRAME
    )
    out = assemble(await parse_stream(adapter(catalog, "deepseek"), raw, 16))
    assert (out.text, len(out.finishes)) == ("paris", 1)


async def test_an_error_event_mid_stream_raises(catalog: Catalog) -> None:
    raw = (
        b'data: {"choices":[{"index":0,"delta":{"content":"par"}}]}\n\n'
        b'data: {"error":{"message":"Internal error, key sk-secret-987654321 leaked","type":"server_error"}}\n\n'
    )
    events: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as raised:
        async for event in adapter(catalog, "deepseek").parse_stream(sse.decode(chunked(raw, 16))):
            events.append(event)
    assert events == [TextDelta(0, "par")]
    assert raised.value.status == 502
    assert "Internal error" in raised.value.message
    assert "sk-secret-987654321" not in raised.value.message


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        # OpenAI's 429 body (https://platform.openai.com/docs/guides/error-codes), sent mid-stream
        (
            {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
            429,
            "upstream_rate_limited",
        ),
        ({"message": "Requests rate limit exceeded", "code": "Throttling.RateQuota"}, 429, "upstream_rate_limited"),
        ({"message": "You exceeded your current quota", "type": "insufficient_quota"}, 429, "upstream_rate_limited"),
        ({"message": "The server is overloaded", "type": "server_overloaded"}, 503, "upstream_unavailable"),
        ({"message": "Service unavailable", "code": 503}, 503, "upstream_unavailable"),
        (
            {"message": "Too long", "type": "invalid_request_error", "code": "context_length_exceeded"},
            400,
            "upstream_invalid_request",
        ),
        ({"message": "Internal error", "type": "server_error"}, 502, "upstream_error"),
        ({"message": "Something odd", "code": "1234"}, 502, "upstream_error"),
    ],
)
async def test_an_error_event_mid_stream_is_mapped_as_the_same_error_before_the_stream(
    catalog: Catalog, error: dict[str, Any], status: int, code: str
) -> None:
    """A rate limit mid-stream is a 429 (rate_limit_error), an overload a 503: not always a 502."""
    raw = b'data: {"choices":[{"index":0,"delta":{"content":"par"}}]}\n\n' + sse.encode(orjson.dumps({"error": error}))
    with pytest.raises(UpstreamError) as raised:
        await parse_stream(adapter(catalog, "qwen"), raw, 16)
    assert (raised.value.status, raised.value.code) == (status, code)
    assert error["message"] in raised.value.message


@pytest.mark.parametrize("data", [b"data: not json\n\n", b"data: [1, 2]\n\n"])
async def test_a_chunk_that_is_not_a_json_object_is_a_bad_response(catalog: Catalog, data: bytes) -> None:
    with pytest.raises(UpstreamError) as raised:
        await parse_stream(adapter(catalog, "deepseek"), data, 4)
    assert (raised.value.status, raised.value.code) == (502, "upstream_bad_response")


# ---------------------------------------------------------------- parse_error


def test_parse_recorded_400_is_an_invalid_request(catalog: Catalog) -> None:
    response = recorded("openai-error-400-developer-role")["response"]
    error = adapter(catalog, "openai").parse_error(400, response["body_text"].encode(), response["headers"])
    assert (error.status, error.code, error.retryable) == (400, "upstream_invalid_request", False)
    assert "does not support 'developer' with this model" in error.message
    assert error.message.startswith("OpenAI rejected the request")


def test_parse_recorded_404_is_an_upstream_error(catalog: Catalog) -> None:
    response = recorded("openai-error-404-model")["response"]
    error = adapter(catalog, "openai").parse_error(404, response["body_text"].encode(), response["headers"])
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", False)
    assert "HTTP 404" in error.message
    assert "does not exist or you do not have access to it" in error.message


ERROR_BODY = b'{"error": {"message": "Something happened", "type": "x"}}'


@pytest.mark.parametrize(
    ("upstream_status", "status", "code", "retryable"),
    [
        (400, 400, "upstream_invalid_request", False),
        (401, 502, "upstream_auth_failed", False),
        (403, 502, "upstream_auth_failed", False),
        (429, 429, "upstream_rate_limited", True),
        (500, 502, "upstream_error", True),
        (503, 503, "upstream_unavailable", True),
        (529, 503, "upstream_unavailable", True),
    ],
)
def test_parse_error_status_mapping(
    catalog: Catalog, upstream_status: int, status: int, code: str, retryable: bool
) -> None:
    error = adapter(catalog, "deepseek").parse_error(upstream_status, ERROR_BODY, {})
    assert (error.status, error.code, error.retryable) == (status, code, retryable)


@pytest.mark.parametrize("upstream_status", [401, 403])
def test_auth_errors_name_the_key_variable(catalog: Catalog, upstream_status: int) -> None:
    body = b'{"error": {"message": "Incorrect API key provided: sk-proj-abcdef123456"}}'
    error = adapter(catalog, "zhipu").parse_error(upstream_status, body, {})
    assert "ZHIPU_API_KEY or ZHIPUAI_API_KEY" in error.message
    assert "sk-proj-abcdef123456" not in error.message


def test_rate_limit_passes_retry_after_on(catalog: Catalog) -> None:
    error = adapter(catalog, "openai").parse_error(429, ERROR_BODY, {"retry-after": "20"})
    assert (error.status, error.retry_after) == (429, 20)
    assert "Something happened" in error.message


@pytest.mark.parametrize(
    ("body", "shown", "hidden"),
    [
        (
            b'{"error": {"message": "bad key sk-abcdefghijk0123 for Bearer tok.en"}}',
            "bad key",
            ["sk-abcdefghijk0123", "tok.en"],
        ),
        (b'{"msg": "quota exceeded for sk-xyz1234567"}', "quota exceeded", ["sk-xyz1234567"]),
        (b'{"error": "plain string error"}', "plain string error", []),
        (b"<html><body>Bad Gateway</body></html>", "Bad Gateway", []),
        (b"", "no details given", []),
    ],
)
def test_error_reasons_are_read_and_scrubbed(catalog: Catalog, body: bytes, shown: str, hidden: list[str]) -> None:
    error = adapter(catalog, "deepseek").parse_error(500, body, {})
    assert shown in error.message
    for secret in hidden:
        assert secret not in error.message


def test_recorded_fixtures_keep_their_source() -> None:
    for path in WIRE.glob("*.json"):
        case = json.loads(path.read_text("utf-8"))
        assert case["source_path"] and case["recorded_file"].startswith("shared/recorded/"), path.name
        assert case["api"] == "openai-chat", path.name
