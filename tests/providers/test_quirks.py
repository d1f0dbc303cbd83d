"""Per-provider quirks of the OpenAI-compatible wire, table by table (docs/providers/openai-compatible.md).

What the upstream receives for each OpenAI field on each provider (sent, renamed, dropped or a 400 naming the
field), how reasoning_effort reaches each provider's knob, and what comes back from each provider's streams.
The .sse fixtures in tests/fakes/wire/openai/ are written from each provider's documentation (URL in their
first lines); the last tests drive the running gateway against the shared fake upstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from aipower import sse
from aipower.catalog import Catalog, CatalogError, Target, load
from aipower.errors import InvalidRequest, UpstreamError
from aipower.messages import (
    ChatRequest,
    Finish,
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
from tests.api.conftest import dedicated_client
from tests.conftest import Gateway, provider_env
from tests.fakes.upstream import FakeUpstream

WIRE = Path(__file__).parent.parent / "fakes" / "wire" / "openai"
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def target(catalog: Catalog, model_id: str) -> Target:
    model = catalog.models[model_id]
    provider = catalog.providers[model.provider]
    return Target(model=model, provider=provider, base_url=provider.base_url, api_key=KEY)


def build(catalog: Catalog, model_id: str, **fields: Any) -> dict[str, Any]:
    """The JSON body the upstream receives for a one-message request with these ChatRequest fields."""
    request = ChatRequest(model=model_id, messages=fields.pop("messages", (USER,)), **fields)
    model = catalog.models[model_id]
    built = OpenAIChat(catalog.providers[model.provider]).build_request(request, target(catalog, model_id))
    body: dict[str, Any] = orjson.loads(built.body)
    return body


USER = Message(role="user", parts=(Text("hi"),))
WEATHER = Tool(name="get_weather", parameters_schema={"type": "object", "properties": {"city": {"type": "string"}}})
SCHEMA = ResponseFormat(type="json_schema", name="answer", json_schema={"type": "object"}, strict=True)

# ---------------------------------------------------------------- the request table

# One request per OpenAI field: the ChatRequest fields that ask for it.
CASES: dict[str, dict[str, Any]] = {
    "temperature": {"temperature": 0.3},
    "top_p": {"top_p": 0.9},
    "n": {"n": 2},
    "seed": {"seed": 7},
    "user": {"user": "user-1234"},
    "logprobs": {"extra": {"logprobs": True, "top_logprobs": 2}},
    "reasoning_effort": {"extra": {"reasoning_effort": "high"}},
    "stop": {"stop": ("END",)},
    "json_schema": {"response_format": SCHEMA},
    "tools": {"tools": (WEATHER,), "tool_choice": "auto"},
    "developer": {"messages": (Message(role="developer", parts=(Text("be brief"),)), USER)},
}


@dataclass(frozen=True)
class Sent:
    """The upstream body holds these fields with these values (and none of `absent`)."""

    fields: dict[str, Any]
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dropped:
    """Accepted, and not sent: the field is absent from the upstream body."""

    field: str


@dataclass(frozen=True)
class Rejected:
    """A 400 whose param names the field."""

    param: str


Outcome = Sent | Dropped | Rejected

SENT: dict[str, Outcome] = {
    "temperature": Sent({"temperature": 0.3}),
    "top_p": Sent({"top_p": 0.9}),
    "n": Sent({"n": 2}),
    "seed": Sent({"seed": 7}),
    "user": Sent({"user": "user-1234"}),
    "logprobs": Sent({"logprobs": True, "top_logprobs": 2}),
    "reasoning_effort": Sent({"reasoning_effort": "high"}),
    "stop": Sent({"stop": ["END"]}),
    "json_schema": Sent(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            }
        }
    ),
    "tools": Sent(
        {
            "tool_choice": "auto",
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters_schema}}
            ],
        }
    ),
    "developer": Sent({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
}
NO_THINKING = Rejected("reasoning_effort")
THINKING_ON = Sent({"thinking": {"type": "enabled"}}, absent=("reasoning_effort",))

EXPECTED: dict[str, dict[str, Outcome]] = {
    "openai/gpt-5": {
        **SENT,
        "developer": Sent(
            {"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]}
        ),
    },
    "openai/gpt-4o-mini": {
        **SENT,
        "reasoning_effort": NO_THINKING,
        "developer": Sent(
            {"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]}
        ),
    },
    "deepseek/deepseek-chat": {
        **SENT,
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "reasoning_effort": NO_THINKING,
        "json_schema": Rejected("response_format"),
    },
    "deepseek/deepseek-reasoner": {
        **SENT,
        "temperature": Rejected("temperature"),
        "top_p": Rejected("top_p"),
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": Dropped("reasoning_effort"),  # it always reasons, at its own depth
        "json_schema": Rejected("response_format"),
    },
    "qwen/qwen-plus": {
        **SENT,
        "user": Dropped("user"),
        "reasoning_effort": Sent({"enable_thinking": True, "thinking_budget": 16384}, absent=("reasoning_effort",)),
    },
    "qwen/qwen-turbo": {
        **SENT,
        "user": Dropped("user"),
        "reasoning_effort": Sent({"enable_thinking": True, "thinking_budget": 16384}, absent=("reasoning_effort",)),
    },
    "zhipu/glm-5.1": {
        **SENT,
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Sent({"user_id": "user-1234"}, absent=("user",)),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": THINKING_ON,
        "json_schema": Rejected("response_format"),
    },
    "zhipu/glm-4-flash": {
        **SENT,
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Sent({"user_id": "user-1234"}, absent=("user",)),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": NO_THINKING,
        "json_schema": Rejected("response_format"),
    },
    "moonshot/kimi-k2.5": {
        **SENT,
        "temperature": Rejected("temperature"),
        "top_p": Rejected("top_p"),
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": THINKING_ON,
        "json_schema": Rejected("response_format"),
    },
    "moonshot/moonshot-v1-8k": {
        **SENT,
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": NO_THINKING,
        "json_schema": Rejected("response_format"),
    },
    "doubao/doubao-pro-256k": {
        **SENT,
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "reasoning_effort": NO_THINKING,
        "json_schema": Rejected("response_format"),
    },
    "minimax/minimax-text-01": {
        **SENT,
        "n": Rejected("n"),
        "seed": Dropped("seed"),
        "user": Dropped("user"),
        "logprobs": Rejected("logprobs"),
        "reasoning_effort": NO_THINKING,
    },
}
ROWS = [(model, case, outcome) for model, table in EXPECTED.items() for case, outcome in table.items()]


def test_the_table_covers_every_openai_compatible_model_and_every_case(catalog: Catalog) -> None:
    compatible = {m.id for m in catalog.models.values() if catalog.providers[m.provider].wire == "openai"}
    assert set(EXPECTED) == compatible
    assert all(set(table) == set(CASES) for table in EXPECTED.values())


@pytest.mark.parametrize(("model_id", "case", "outcome"), ROWS, ids=[f"{m}-{c}" for m, c, _ in ROWS])
def test_what_the_upstream_receives(catalog: Catalog, model_id: str, case: str, outcome: Outcome) -> None:
    fields = dict(CASES[case])
    match outcome:
        case Rejected(param=param):
            with pytest.raises(InvalidRequest) as raised:
                build(catalog, model_id, **fields)
            assert raised.value.status == 400
            assert raised.value.param == param
            assert model_id in raised.value.message
        case Dropped(field=name):
            body = build(catalog, model_id, **fields)
            assert name not in body
            assert body["messages"] == [{"role": "user", "content": "hi"}]
        case Sent(fields=expected, absent=absent):
            body = build(catalog, model_id, **fields)
            assert {k: body.get(k) for k in expected} == expected
            assert not [name for name in absent if name in body]


@pytest.mark.parametrize(
    ("model_id", "field"),
    [
        ("openai/gpt-5", "max_completion_tokens"),
        ("deepseek/deepseek-chat", "max_tokens"),
        ("qwen/qwen-plus", "max_tokens"),
        ("zhipu/glm-5.1", "max_tokens"),
        ("moonshot/kimi-k2.5", "max_tokens"),
        ("doubao/doubao-pro-256k", "max_tokens"),
        ("minimax/minimax-text-01", "max_completion_tokens"),
    ],
)
def test_the_max_tokens_field_of_each_provider(catalog: Catalog, model_id: str, field: str) -> None:
    body = build(catalog, model_id, max_tokens=99)
    assert body[field] == 99
    assert ({"max_tokens", "max_completion_tokens"} - {field}).isdisjoint(body)


# ---------------------------------------------------------------- values that ask for nothing, and other limits


@pytest.mark.parametrize(
    ("model_id", "extra"),
    [
        ("deepseek/deepseek-reasoner", {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False}),
        ("deepseek/deepseek-chat", {"parallel_tool_calls": True, "logit_bias": {}}),
        ("zhipu/glm-5.1", {"top_logprobs": 0, "parallel_tool_calls": True}),
        ("minimax/minimax-text-01", {"presence_penalty": 0, "logit_bias": {}}),
    ],
)
def test_a_rejected_field_holding_its_no_op_value_is_accepted_and_not_sent(
    catalog: Catalog, model_id: str, extra: dict[str, Any]
) -> None:
    body = build(catalog, model_id, extra=extra)
    assert set(extra).isdisjoint(body)


@pytest.mark.parametrize(
    ("model_id", "extra", "param"),
    [
        ("deepseek/deepseek-reasoner", {"presence_penalty": 0.5}, "presence_penalty"),
        ("deepseek/deepseek-chat", {"parallel_tool_calls": False}, "parallel_tool_calls"),
        ("deepseek/deepseek-chat", {"logit_bias": {"50256": -100}}, "logit_bias"),
        ("qwen/qwen-turbo", {"logit_bias": {"1": 1}}, "logit_bias"),
        ("minimax/minimax-text-01", {"frequency_penalty": -1.0}, "frequency_penalty"),
        ("moonshot/kimi-k2.5", {"presence_penalty": 1.0}, "presence_penalty"),
    ],
)
def test_a_rejected_field_that_asks_for_something_is_a_400(
    catalog: Catalog, model_id: str, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        build(catalog, model_id, extra=extra)
    assert (raised.value.param, raised.value.code) == (param, "unsupported_parameter")


@pytest.mark.parametrize(("model_id", "most"), [("qwen/qwen-plus", 4), ("moonshot/moonshot-v1-8k", 5)])
def test_n_up_to_the_provider_limit_is_sent_and_above_it_is_a_400(catalog: Catalog, model_id: str, most: int) -> None:
    assert build(catalog, model_id, n=most)["n"] == most
    with pytest.raises(InvalidRequest) as raised:
        build(catalog, model_id, n=most + 1)
    assert raised.value.param == "n"
    assert f"at most {most} choices" in raised.value.message


def test_n_1_is_not_sent_where_only_one_choice_exists(catalog: Catalog) -> None:
    assert "n" not in build(catalog, "deepseek/deepseek-chat", n=1)


@pytest.mark.parametrize(
    ("model_id", "choice", "accepted"),
    [
        ("zhipu/glm-5.1", "auto", True),
        ("zhipu/glm-5.1", "required", False),
        ("zhipu/glm-5.1", "get_weather", False),
        ("moonshot/moonshot-v1-8k", "get_weather", True),
        ("moonshot/moonshot-v1-8k", "required", False),
        ("moonshot/kimi-k2.5", "none", True),
        ("moonshot/kimi-k2.5", "get_weather", False),
        ("deepseek/deepseek-chat", "required", True),
    ],
)
def test_tool_choice_kinds_per_provider(catalog: Catalog, model_id: str, choice: str, accepted: bool) -> None:
    if accepted:
        assert "tool_choice" in build(catalog, model_id, tools=(WEATHER,), tool_choice=choice)
        return
    with pytest.raises(InvalidRequest) as raised:
        build(catalog, model_id, tools=(WEATHER,), tool_choice=choice)
    assert raised.value.param == "tool_choice"


def test_json_object_is_sent_where_json_schema_is_rejected(catalog: Catalog) -> None:
    body = build(catalog, "deepseek/deepseek-chat", response_format=ResponseFormat(type="json_object"))
    assert body["response_format"] == {"type": "json_object"}


# ---------------------------------------------------------------- reasoning_effort -> each provider's knob


@pytest.mark.parametrize(
    ("model_id", "effort", "sent"),
    [
        ("openai/gpt-5", "minimal", {"reasoning_effort": "minimal"}),
        ("qwen/qwen-plus", "none", {"enable_thinking": False}),
        ("qwen/qwen-plus", "minimal", {"enable_thinking": True, "thinking_budget": 1024}),
        ("qwen/qwen-turbo", "low", {"enable_thinking": True, "thinking_budget": 2048}),
        ("qwen/qwen-plus", "medium", {"enable_thinking": True, "thinking_budget": 8192}),
        ("zhipu/glm-5.1", "none", {"thinking": {"type": "disabled"}}),
        ("zhipu/glm-5.1", "low", {"thinking": {"type": "enabled"}}),
        ("moonshot/kimi-k2.5", "none", {"thinking": {"type": "disabled"}}),
        ("deepseek/deepseek-chat", "none", {}),  # a model that does not reason: "none" asks for nothing
        ("doubao/doubao-pro-256k", "none", {}),
        ("deepseek/deepseek-reasoner", "low", {}),
    ],
)
def test_reasoning_effort_reaches_each_providers_knob(
    catalog: Catalog, model_id: str, effort: str, sent: dict[str, Any]
) -> None:
    body = build(catalog, model_id, extra={"reasoning_effort": effort})
    knobs = {"reasoning_effort", "enable_thinking", "thinking_budget", "thinking"}
    assert {k: body[k] for k in knobs & body.keys()} == sent


@pytest.mark.parametrize(
    ("model_id", "effort"),
    [
        ("deepseek/deepseek-reasoner", "none"),  # cannot be turned off
        ("qwen/qwen-plus", "xhigh"),  # not one of the mapped values
        ("zhipu/glm-5.1", "max"),
        ("minimax/minimax-text-01", "low"),
    ],
)
def test_reasoning_effort_the_model_cannot_honour_is_a_400(catalog: Catalog, model_id: str, effort: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        build(catalog, model_id, extra={"reasoning_effort": effort})
    assert (raised.value.param, raised.value.code) == ("reasoning_effort", "invalid_value")


def test_the_callers_own_provider_knob_wins_key_by_key(catalog: Catalog) -> None:
    # pydantic-ai sends both to Zhipu (shared/recorded/zhipu/.../test_zai_reasoning_effort__0__...json)
    zhipu = build(catalog, "zhipu/glm-5.1", extra={"reasoning_effort": "high", "thinking": {"clear_thinking": False}})
    assert zhipu["thinking"] == {"type": "enabled", "clear_thinking": False}
    qwen = build(catalog, "qwen/qwen-plus", extra={"reasoning_effort": "high", "thinking_budget": 500})
    assert (qwen["enable_thinking"], qwen["thinking_budget"]) == (True, 500)


# ---------------------------------------------------------------- quirks are data: provider, model, operator


def test_model_quirks_are_merged_over_the_providers(catalog: Catalog) -> None:
    provider = catalog.providers["deepseek"]
    chat = catalog.models["deepseek/deepseek-chat"].quirks_at(provider)
    reasoner = catalog.models["deepseek/deepseek-reasoner"].quirks_at(provider)
    assert chat == provider.quirks
    assert reasoner.drop == chat.drop  # inherited
    assert reasoner.reject == chat.reject | {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
    }
    assert (chat.reasoning, reasoner.reasoning) == ("unsupported", "always")
    assert reasoner.max_n == 1


def test_an_operator_file_changes_quirks_by_key(tmp_path: Path) -> None:
    extra = tmp_path / "quirks.toml"
    extra.write_text(
        '[providers.deepseek]\nquirks = { max_n = 3 }\n[models."qwen/qwen-plus"]\nquirks = { drop = ["seed"] }\n',
        "utf-8",
    )
    loaded = load([extra])
    deepseek = loaded.providers["deepseek"]
    assert deepseek.quirks.max_n == 3
    assert deepseek.quirks.reasoning == "unsupported"  # the shipped keys not named stay
    reasoner = loaded.models["deepseek/deepseek-reasoner"].quirks_at(deepseek)
    assert (reasoner.max_n, reasoner.reasoning) == (3, "always")  # inherits the change, keeps its own keys
    assert "seed" in loaded.models["qwen/qwen-plus"].quirks_at(loaded.providers["qwen"]).drop


@pytest.mark.parametrize(
    "bad", ['quirks = { reasoning = "sometimes" }', "quirks = { max_n = 0 }", "quirks = { nonsense = true }"]
)
def test_a_bad_quirk_fails_at_load_naming_the_key(tmp_path: Path, bad: str) -> None:
    extra = tmp_path / "bad.toml"
    extra.write_text(f"[providers.qwen]\n{bad}\n", "utf-8")
    with pytest.raises(CatalogError, match=r"providers\.qwen\.quirks"):
        load([extra])


# ---------------------------------------------------------------- what comes back, per provider


async def chunked(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


async def stream(catalog: Catalog, provider_id: str, raw: bytes, size: int = 7) -> list[StreamEvent]:
    adapter = OpenAIChat(catalog.providers[provider_id])
    return [event async for event in adapter.parse_stream(sse.decode(chunked(raw, size)))]


def fixture(name: str) -> bytes:
    return (WIRE / name).read_bytes()


@dataclass
class Assembled:
    text: str
    reasoning: str
    calls: dict[int, tuple[str | None, str | None, str]]
    finishes: list[Finish]
    usage: list[Usage]


def assemble(events: list[StreamEvent]) -> Assembled:
    """What an OpenAI SDK would accumulate: it concatenates strings, so a repeated id or name would show."""
    out = Assembled("", "", {}, [], [])
    for event in events:
        match event:
            case TextDelta(text=text):
                out.text += text
            case ReasoningDelta(text=text):
                out.reasoning += text
            case ToolCallDelta(call_index=i, id=call_id, name=name, arguments_fragment=fragment):
                old_id, old_name, arguments = out.calls.get(i, (None, None, ""))
                new_id = (old_id or "") + (call_id or "") or None
                new_name = (old_name or "") + (name or "") or None
                out.calls[i] = (new_id, new_name, arguments + fragment)
            case Finish():
                out.finishes.append(event)
            case UsageReport(usage=usage):
                out.usage.append(usage)
    return out


@pytest.mark.parametrize("size", [5, 1 << 20])
async def test_zhipu_streams_a_whole_tool_call_in_one_chunk(catalog: Catalog, size: int) -> None:
    out = assemble(await stream(catalog, "zhipu", fixture("zhipu-stream-tool-call.sse"), size))
    assert out.calls == {0: ("call_-8946328761520381545", "get_weather", '{"city": "北京"}')}
    assert out.text == ""
    assert out.finishes == [Finish(0, "tool_calls")]
    assert out.usage == [Usage(187, 14, cached_input_tokens=64)]


@pytest.mark.parametrize("size", [5, 1 << 20])
async def test_qwen_empty_ids_and_names_on_later_fragments_are_not_repeated(catalog: Catalog, size: int) -> None:
    events = await stream(catalog, "qwen", fixture("qwen-stream-tool-calls.sse"), size)
    out = assemble(events)
    assert out.calls == {
        0: ("call_8f08d2b0fc0c4d8fab7123", "get_current_weather", '{"location": "上海"}'),
        1: ("call_2b3c6e2d5d7a4b1f9e8a02", "get_current_time", "{}"),
    }
    assert not any(isinstance(e, TextDelta) for e in events)  # content: null is no text
    assert out.finishes == [Finish(0, "tool_calls")]
    assert out.usage == [Usage(284, 38, cached_input_tokens=256)]


async def test_moonshot_usage_inside_the_choice_with_its_cached_tokens(catalog: Catalog) -> None:
    out = assemble(await stream(catalog, "moonshot", fixture("moonshot-stream-tool-call.sse")))
    assert out.calls == {0: ("search:0", "search", '{"query": "月之暗面"}')}
    assert out.finishes == [Finish(0, "tool_calls")]
    assert out.usage == [Usage(101, 17, cached_input_tokens=96)]


async def test_doubao_reasoning_content_and_reasoning_tokens(catalog: Catalog) -> None:
    out = assemble(await stream(catalog, "doubao", fixture("doubao-stream-reasoning.sse")))
    assert (out.reasoning, out.text) == ("用户问1+1,答案是2。", "1+1=2")
    assert out.finishes == [Finish(0, "stop")]
    assert out.usage == [Usage(12, 24, reasoning_tokens=17)]


@pytest.mark.parametrize("size", [1, 3, 16, 1 << 20])
async def test_minimax_inline_think_tags_become_reasoning(catalog: Catalog, size: int) -> None:
    events = await stream(catalog, "minimax", fixture("minimax-stream-think.sse"), size)
    out = assemble(events)
    assert out.reasoning == "\nThe user greets me; answer briefly.\n"
    assert out.text == "Hello! How can I help?"
    assert "<" not in out.text + out.reasoning
    assert out.finishes == [Finish(0, "stop")]
    assert out.usage == [Usage(40, 21, reasoning_tokens=12)]
    last_content = max(i for i, e in enumerate(events) if isinstance(e, TextDelta | ReasoningDelta))
    assert last_content < events.index(Finish(0, "stop"))


async def test_think_tags_are_read_only_where_the_provider_uses_them(catalog: Catalog) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "<think>x</think>y"}, "finish_reason": "stop"}]}
    raw = sse.encode(orjson.dumps(chunk)) + sse.DONE_FRAME
    assert assemble(await stream(catalog, "deepseek", raw)).text == "<think>x</think>y"
    minimax = assemble(await stream(catalog, "minimax", raw))
    assert (minimax.reasoning, minimax.text) == ("x", "y")


async def test_an_unclosed_think_at_the_end_of_an_answer_is_reasoning(catalog: Catalog) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "<think>still going </thi"}, "finish_reason": "length"}]}
    raw = sse.encode(orjson.dumps(chunk)) + sse.DONE_FRAME
    out = assemble(await stream(catalog, "minimax", raw))
    assert (out.reasoning, out.text) == ("still going </thi", "")


def test_minimax_think_tags_in_a_whole_answer(catalog: Catalog) -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "<think>\nShort question.\n</think>\n\nParis."},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17},
    }
    response = OpenAIChat(catalog.providers["minimax"]).parse_response(orjson.dumps(body))
    assert response.choices[0].message.parts == (Reasoning("\nShort question.\n"), Text("Paris."))


def test_minimax_reasoning_details_with_reasoning_split(catalog: Catalog) -> None:
    # https://platform.minimax.io/docs/api-reference/text-openai-api : reasoning_split=true moves it out of content
    message = {
        "role": "assistant",
        "content": "Paris.",
        "reasoning_details": [{"type": "reasoning.text", "id": "r1", "format": "MiniMax-response-v1", "text": "Easy."}],
    }
    body = {"choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
    response = OpenAIChat(catalog.providers["minimax"]).parse_response(orjson.dumps(body))
    assert response.choices[0].message.parts == (Reasoning("Easy."), Text("Paris."))


async def test_tool_calls_without_index_are_told_apart_by_id(catalog: Catalog) -> None:
    # Robustness: a provider that leaves out `index` and repeats the id on every fragment.
    chunks = [
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"id": "a", "function": {"arguments": "}"}}]}}]},
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"id": "b", "type": "function", "function": {"name": "g"}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "[]"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    raw = b"".join(sse.encode(orjson.dumps(c)) for c in chunks) + sse.DONE_FRAME
    out = assemble(await stream(catalog, "zhipu", raw))
    assert out.calls == {0: ("a", "f", "{}"), 1: ("b", "g", "[]")}


def test_arguments_sent_as_an_object_are_re_encoded(catalog: Catalog) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    body = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"tool_calls": [call]}}]}
    response = OpenAIChat(catalog.providers["zhipu"]).parse_response(orjson.dumps(body))
    assert response.choices[0].message.parts == (ToolCall("c1", "f", '{"x":1}'),)


@pytest.mark.parametrize(
    ("provider_id", "reason", "status", "code"),
    [
        ("zhipu", "network_error", 502, "upstream_error"),  # https://docs.bigmodel.cn/api-reference
        ("deepseek", "insufficient_system_resource", 503, "upstream_unavailable"),
    ],
)
async def test_finish_reasons_that_mean_failure_are_errors(
    catalog: Catalog, provider_id: str, reason: str, status: int, code: str
) -> None:
    adapter = OpenAIChat(catalog.providers[provider_id])
    body = {"choices": [{"index": 0, "finish_reason": reason, "message": {"role": "assistant", "content": "Par"}}]}
    with pytest.raises(UpstreamError) as raised:
        adapter.parse_response(orjson.dumps(body))
    assert (raised.value.status, raised.value.code, raised.value.retryable) == (status, code, True)
    assert reason in raised.value.message
    chunk = {"choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": reason}]}
    with pytest.raises(UpstreamError) as streamed:
        await stream(catalog, provider_id, sse.encode(orjson.dumps(chunk)) + sse.DONE_FRAME)
    assert streamed.value.status == status


@pytest.mark.parametrize(
    ("raw", "finish"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("sensitive", "content_filter"),
        ("function_call", "tool_calls"),
    ],
)
def test_finish_reasons_map_exactly(catalog: Catalog, raw: str, finish: str) -> None:
    body = {"choices": [{"index": 0, "finish_reason": raw, "message": {"content": "x"}}]}
    assert OpenAIChat(catalog.providers["qwen"]).parse_response(orjson.dumps(body)).choices[0].finish_reason == finish


# ---------------------------------------------------------------- through the running gateway

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("deepseek/deepseek-reasoner", {"temperature": 0.2}, "temperature"),
        ("deepseek/deepseek-chat", {"n": 2}, "n"),
        ("zhipu/glm-4-flash", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("moonshot/moonshot-v1-8k", {"logprobs": True}, "logprobs"),
    ],
)
def test_a_rejected_field_is_a_400_naming_it_and_nothing_reaches_the_upstream(
    gateway: Gateway, upstream: FakeUpstream, model: str, fields: dict[str, Any], param: str
) -> None:
    with (
        openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as raised,
    ):
        client.chat.completions.create(model=model, messages=HELLO, **fields)
    assert raised.value.status_code == 400
    assert raised.value.body is not None
    assert raised.value.body["param"] == param
    assert upstream.requests == []


def test_minimax_rejects_n_before_calling_it(
    gateway: Gateway, upstream: FakeUpstream, fake_upstream_server: tuple[FakeUpstream, str]
) -> None:
    upstream_url = fake_upstream_server[1]
    with (
        dedicated_client(gateway, upstream_url, provider_env=provider_env(upstream_url)) as configured,
        pytest.raises(openai.BadRequestError) as raised,
    ):
        configured.chat.completions.create(model="minimax/minimax-text-01", messages=HELLO, n=2)
    assert raised.value.body is not None
    assert raised.value.body["param"] == "n"
    assert upstream.requests == []


def test_the_gateway_sends_each_providers_knob(gateway: Gateway, upstream: FakeUpstream) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0) as client:
        client.chat.completions.create(model="qwen/qwen-plus", messages=HELLO, reasoning_effort="low", user="u-42")
        client.chat.completions.create(model="zhipu/glm-5.1", messages=HELLO, reasoning_effort="none", user="u-42")
    qwen, zhipu = (r.json for r in upstream.requests)
    assert (qwen["enable_thinking"], qwen["thinking_budget"]) == (True, 2048)
    assert "user" not in qwen and "reasoning_effort" not in qwen
    assert zhipu["thinking"] == {"type": "disabled"}
    assert zhipu["user_id"] == "u-42" and "user" not in zhipu


def test_fixtures_name_their_source() -> None:
    for path in WIRE.glob("*.sse"):
        assert path.read_text("utf-8").startswith(": "), path.name  # an SSE comment with the doc URL
        assert "https://" in path.read_text("utf-8").split("\ndata:")[0], path.name


def test_the_docs_table_names_every_quirk() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "providers" / "openai-compatible.md").read_text("utf-8")
    for name in (f.name for f in dataclasses.fields(load().providers["qwen"].quirks)):
        assert f"`{name}`" in docs, name
