"""What the upstream receives: its URL, the operator's key, its own model name, and the caller's fields intact."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.api.conftest import dedicated_client
from tests.conftest import Gateway, provider_env
from tests.fakes.upstream import FakeUpstream, JsonReply, SseReply, completion

HELLO = [{"role": "user", "content": "Hello"}]

# (catalog id, upstream path, upstream model name from catalog.toml)
PROVIDERS = [
    ("openai/gpt-4o-mini", "/openai/chat/completions", "gpt-4o-mini"),
    ("deepseek/deepseek-chat", "/deepseek/chat/completions", "deepseek-chat"),
    ("qwen/qwen-turbo", "/qwen/chat/completions", "qwen-turbo"),
    ("zhipu/glm-4-flash", "/zhipu/chat/completions", "glm-4-flash"),
    ("moonshot/kimi-k2.5", "/moonshot/chat/completions", "kimi-k2.5"),
    ("doubao/doubao-pro-256k", "/doubao/chat/completions", "doubao-pro-256k"),
]


@pytest.mark.parametrize(("model", "path", "upstream_model"), PROVIDERS)
def test_each_provider_gets_its_url_key_and_model_name(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, path: str, upstream_model: str
) -> None:
    reply = client.chat.completions.create(model=model, messages=HELLO)

    provider = model.split("/")[0]
    (sent,) = upstream.requests
    assert (sent.method, sent.path) == ("POST", path)
    assert sent.headers["authorization"] == f"Bearer sk-fake-{provider}-secret"
    assert sent.json["model"] == upstream_model
    assert sent.json["messages"] == HELLO
    assert reply.model == model


def test_minimax_gets_its_model_name_once_configured(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    with dedicated_client(gateway, upstream_url, provider_env=provider_env(upstream_url)) as configured:
        reply = configured.chat.completions.create(model="minimax/minimax-text-01", messages=HELLO)

    (sent,) = upstream.requests
    assert sent.path == "/minimax/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-fake-minimax-secret"
    assert sent.json["model"] == "MiniMax-Text-01"
    assert reply.model == "minimax/minimax-text-01"


PASSED_THROUGH: dict[str, Any] = {
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": ["END", "STOP"],
    "n": 2,
    "seed": 42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logprobs": True,
    "top_logprobs": 3,
    "logit_bias": {"50256": -100},
    "user": "user-1234",
    "parallel_tool_calls": False,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "weather",
            "strict": True,
            "schema": {"type": "object", "properties": {"c": {"type": "number"}}, "required": ["c"]},
        },
    },
}


def test_request_fields_are_passed_through_unchanged(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    # OpenAI, the reference; what the other compatible providers do per field: tests/providers/test_quirks.py
    unknown = {"vendor_option": {"nested": [1, 2, 3]}}

    client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO, extra_body=unknown, **PASSED_THROUGH)

    sent = upstream.last.json
    assert {name: sent.get(name) for name in PASSED_THROUGH} == PASSED_THROUGH
    assert sent["vendor_option"] == unknown["vendor_option"]


@pytest.mark.parametrize(
    ("model", "sent_field", "dropped_field"),
    [
        ("openai/gpt-4o-mini", "max_completion_tokens", "max_tokens"),
        ("deepseek/deepseek-chat", "max_tokens", "max_completion_tokens"),
        ("qwen/qwen-turbo", "max_tokens", "max_completion_tokens"),
    ],
)
@pytest.mark.parametrize("caller_field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_uses_the_field_each_provider_expects(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, sent_field: str, dropped_field: str, caller_field: str
) -> None:
    client.chat.completions.create(model=model, messages=HELLO, **{caller_field: 50})

    sent = upstream.last.json
    assert sent[sent_field] == 50
    assert dropped_field not in sent


@pytest.mark.parametrize(("model", "role"), [("openai/gpt-4o-mini", "developer"), ("deepseek/deepseek-chat", "system")])
def test_developer_role_becomes_system_where_unsupported(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, role: str
) -> None:
    client.chat.completions.create(
        model=model, messages=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    )

    assert upstream.last.json["messages"][0] == {"role": role, "content": "Be terse."}


@pytest.mark.parametrize("caller_asks", [True, False])
def test_streams_ask_the_upstream_for_usage(client: openai.OpenAI, upstream: FakeUpstream, caller_asks: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if caller_asks else {}

    with client.chat.completions.create(model="qwen/qwen-turbo", messages=HELLO, stream=True, **options) as stream:
        list(stream)

    sent = upstream.last.json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_a_providers_cookies_are_never_sent_back_nor_shown_to_the_caller(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    """The gateway is one client for every caller: a cookie a provider sets on one caller's answer (Cloudflare in
    front of a provider sets several) must not ride along on anyone's next request. The provider is reached by a
    host name here, as real ones are (a cookie jar ignores cookies from a bare IP address)."""
    by_name = upstream_url.replace("127.0.0.1", "localhost")
    upstream.enqueue(JsonReply(completion("gpt-4o-mini", "one"), headers={"set-cookie": "__cf_bm=one; Path=/"}))
    with dedicated_client(gateway, by_name) as client:
        first = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=HELLO)
        assert "set-cookie" not in first.headers
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    assert len(upstream.requests) == 2
    assert "cookie" not in upstream.requests[1].headers


TOOL_LOOP: list[Any] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "The user wants the weather; I will call the tool.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]
WEATHER_TOOL: Any = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("model", "sent"),
    [
        ("deepseek/deepseek-reasoner", True),
        ("moonshot/kimi-k2.5", True),
        ("zhipu/glm-5.1", True),
        ("openai/gpt-4o-mini", False),
        ("qwen/qwen-plus", False),
    ],
)
def test_an_sdk_callers_reasoning_content_reaches_providers_that_need_it(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, sent: bool
) -> None:
    """Tool loops on thinking models: DeepSeek and Moonshot answer 400 when a tool-call turn's reasoning is missing."""
    client.chat.completions.create(model=model, messages=TOOL_LOOP, tools=[WEATHER_TOOL])

    assistant = upstream.last.json["messages"][1]
    assert assistant.get("reasoning_content") == (TOOL_LOOP[1]["reasoning_content"] if sent else None)
    assert assistant["tool_calls"] == TOOL_LOOP[1]["tool_calls"]


def _qwen_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-q", "object": "chat.completion.chunk", "model": "qwen-plus", "choices": [choice]}


def test_qwen_thinking_without_stream_is_streamed_upstream_and_answered_as_one_json(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """DashScope documents Qwen3 thinking as streaming-only (a non-streamed call with enable_thinking is a 400):
    the gateway streams it upstream and answers the caller's non-streamed call with the whole message."""
    frames = (
        _qwen_chunk({"role": "assistant", "content": "", "reasoning_content": "Add "}),
        _qwen_chunk({"reasoning_content": "them."}),
        _qwen_chunk({"content": "2 + 2"}),
        _qwen_chunk({"content": " = 4"}),
        _qwen_chunk({}, "stop"),
        {"id": "chatcmpl-q", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}},
    )
    upstream.enqueue(SseReply(frames))

    reply = client.chat.completions.create(model="qwen/qwen-plus", messages=HELLO, reasoning_effort="low")

    (sent,) = upstream.requests
    assert sent.json["stream"] is True and sent.json["stream_options"] == {"include_usage": True}
    assert (sent.json["enable_thinking"], sent.json["thinking_budget"]) == (True, 2048)
    message = reply.choices[0].message
    assert (message.content, (message.model_extra or {}).get("reasoning_content")) == ("2 + 2 = 4", "Add them.")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 9)


@pytest.mark.parametrize(
    "fields",
    [{}, {"reasoning_effort": "none"}, {"reasoning_effort": "low", "extra_body": {"enable_thinking": False}}],
)
def test_qwen_without_thinking_stays_a_plain_call(
    client: openai.OpenAI, upstream: FakeUpstream, fields: dict[str, Any]
) -> None:
    client.chat.completions.create(model="qwen/qwen-plus", messages=HELLO, **fields)

    (sent,) = upstream.requests
    assert "stream" not in sent.json
