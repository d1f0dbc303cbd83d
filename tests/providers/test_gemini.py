"""aipower/providers/gemini: exact Gemini JSON built, exact internal results parsed, over tests/fakes/wire/gemini."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
    FinishReason,
    Message,
    Part,
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
from aipower.providers.gemini import Gemini
from aipower.providers.gemini.response import call_id_prefix

FIXTURES = Path(__file__).parents[1] / "fakes" / "wire" / "gemini"
CATALOG = load()
ADAPTER = Gemini(CATALOG.providers["google"])
TARGET = Target(
    model=CATALOG.models["google/gemini-2.5-flash"],
    provider=CATALOG.providers["google"],
    base_url="https://generativelanguage.googleapis.com",
    api_key="gm-test-key-123",
)


def fixture(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{case}.json").read_text())
    return data


def raw_part(case: str, index: int, key: str = "text") -> str:
    """A long text or signature, read from the fixture's response rather than copied here."""
    value: str = fixture(case)["gemini_response"]["candidates"][0]["content"]["parts"][index][key]
    return value


def request_of(case: str) -> ChatRequest:
    return parse_request(orjson.dumps(fixture(case)["openai_request"]))


def made_id(response: dict[str, Any], ordinal: int) -> str:
    """The id the gateway gives the ordinal-th call of candidate 0 of a response Gemini sent without call ids."""
    return f"{call_id_prefix(response['responseId'], 0)}{ordinal}"


def answer(parts: tuple[Part, ...], finish: FinishReason, usage: Usage) -> ChatResponse:
    return ChatResponse(choices=(Choice(0, Message("assistant", parts), finish),), usage=usage)


NON_STREAM_CASES = [
    "plain-text",
    "system-prompt",
    "multi-turn",
    "image-base64",
    "image-url",
    "tool-call",
    "parallel-tool-calls",
    "tool-result",
    "json-schema",
    "reasoning",
    "max-tokens",
    "stop-sequence",
]
STREAM_CASES = ["stream-text", "stream-tool-call", "stream-reasoning", "stream-signed-tool-call", "stream-error"]


def expected_response(case: str) -> ChatResponse:
    sig = "thoughtSignature"
    match case:
        case "plain-text":
            return answer((Text("The capital of France is **Paris**."),), "stop", Usage(8, 8))
        case "system-prompt":
            return answer((Text(raw_part(case, 0)),), "stop", Usage(376, 41))
        case "multi-turn":
            return answer((Text(raw_part(case, 0)),), "stop", Usage(10, 119 + 699, 0, 699))
        case "image-base64":
            parts = (Reasoning("", raw_part(case, 0, sig)), Text(raw_part(case, 0)))
            return answer(parts, "stop", Usage(345, 80 + 141, 191, 141))
        case "image-url":
            parts = (Reasoning("", raw_part(case, 0, sig)), Text(raw_part(case, 0)))
            return answer(parts, "stop", Usage(345, 84 + 44, 0, 44))
        case "tool-call":
            call = ToolCall(made_id(fixture(case)["gemini_response"], 0), "get_weather", '{"city":"Paris"}')
            parts = (Reasoning("", raw_part(case, 0, sig)), call)
            return answer(parts, "tool_calls", Usage(49, 15 + 48, 0, 48))
        case "parallel-tool-calls":
            calls = tuple(
                ToolCall(made_id(fixture(case)["gemini_response"], n), "generate_topic", "{}") for n in range(3)
            )
            return answer((Reasoning("", raw_part(case, 0, sig)), *calls), "tool_calls", Usage(83, 30 + 190, 0, 190))
        case "tool-result":
            args = '{"city":"Mexico City","country":"Mexico"}'
            call = ToolCall(made_id(fixture(case)["gemini_response"], 0), "final_result", args)
            return answer((call,), "tool_calls", Usage(47, 8))
        case "json-schema":
            text = '{"value":"A","children":[{"value":"B"},{"value":"C"}]}'
            return answer((Text(text),), "stop", Usage(20, 16 + 183, 0, 183))
        case "reasoning":
            parts = (Reasoning(raw_part(case, 0)), Reasoning("", raw_part(case, 1, sig)), Text(raw_part(case, 1)))
            return answer(parts, "stop", Usage(29, 736 + 1001, 0, 1001))
        case "max-tokens":
            return answer((Text("The capital of France is"),), "length", Usage(15, 5))
        case "stop-sequence":
            return answer((Text("The most iconic city in France is "),), "stop", Usage(25, 8))
    raise AssertionError(case)


@pytest.mark.parametrize("case", NON_STREAM_CASES + STREAM_CASES)
def test_build_request_makes_the_exact_gemini_body(case: str) -> None:
    built = ADAPTER.build_request(request_of(case), TARGET)

    assert orjson.loads(built.body) == fixture(case)["gemini_request"]


@pytest.mark.parametrize("case", NON_STREAM_CASES)
def test_parse_response_gives_the_exact_internal_answer(case: str) -> None:
    body = orjson.dumps(fixture(case)["gemini_response"])

    assert ADAPTER.parse_response(body) == expected_response(case)


def test_url_and_headers_carry_the_key_in_a_header_only() -> None:
    plain = ADAPTER.build_request(request_of("plain-text"), TARGET)
    streamed = ADAPTER.build_request(request_of("stream-text"), TARGET)

    assert plain.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert streamed.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert plain.headers == {"x-goog-api-key": "gm-test-key-123", "Content-Type": "application/json"}
    assert "gm-test-key-123" not in streamed.url


# --- streams ---------------------------------------------------------------------------------------------


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def stream_events(data: bytes, size: int = 64) -> list[StreamEvent]:
    return [event async for event in ADAPTER.parse_stream(sse.decode(_chunks(data, size)))]


def sse_bytes(case: str) -> bytes:
    return (FIXTURES / fixture(case)["gemini_sse"]).read_bytes()


def first_chunk(data: bytes) -> dict[str, Any]:
    chunk: dict[str, Any] = json.loads(data.split(b"\r\n\r\n")[0].removeprefix(b"data: "))
    return chunk


async def test_stream_text_deltas_then_finish_then_the_last_usage_once() -> None:
    events = await stream_events(sse_bytes("stream-text"))

    assert events == [
        TextDelta(0, "The"),
        TextDelta(0, " capital of France"),
        TextDelta(0, " is Paris.\n"),
        Finish(0, "stop"),
        UsageReport(Usage(13, 8)),
    ]


async def test_stream_tool_call_is_one_delta_with_full_arguments() -> None:
    data = sse_bytes("stream-tool-call")

    events = await stream_events(data)

    assert events == [
        ToolCallDelta(0, 0, made_id(first_chunk(data), 0), "get_capital", '{"country":"France"}'),
        Finish(0, "tool_calls"),
        UsageReport(Usage(52, 5)),
    ]


async def test_stream_signed_tool_call_carries_the_signature_on_a_reasoning_delta() -> None:
    data = sse_bytes("stream-signed-tool-call")
    signature = first_chunk(data)["candidates"][0]["content"]["parts"][0]

    events = await stream_events(data)

    assert events == [
        ReasoningDelta(0, "", signature["thoughtSignature"]),
        ToolCallDelta(0, 0, made_id(first_chunk(data), 0), "get_country", "{}"),
        Finish(0, "tool_calls"),
        UsageReport(Usage(29, 10 + 202, 0, 202)),
    ]


async def test_stream_reasoning_streams_thoughts_then_text() -> None:
    data = sse_bytes("stream-reasoning")
    chunks = [json.loads(frame.removeprefix(b"data: ")) for frame in data.split(b"\r\n\r\n") if frame.strip()]
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    expected: list[StreamEvent] = []
    for p in parts:  # thoughts first; the first answer part carries the signature, which goes just before it
        if p.get("thought"):
            expected.append(ReasoningDelta(0, p["text"]))
            continue
        if "thoughtSignature" in p:
            expected.append(ReasoningDelta(0, "", p["thoughtSignature"]))
        expected.append(TextDelta(0, p["text"]))

    events = await stream_events(data, size=1000)

    assert [p.get("thought", False) for p in parts][:4] == [True, True, True, True]
    assert sum("thoughtSignature" in p for p in parts) == 1
    assert events == [*expected, Finish(0, "stop"), UsageReport(Usage(34, 469 + 787, 0, 787))]


async def test_stream_error_mid_stream_raises_the_mapped_error_after_the_first_delta() -> None:
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as caught:
        async for event in ADAPTER.parse_stream(sse.decode(_chunks(sse_bytes("stream-error"), 50))):
            seen.append(event)

    assert seen == [TextDelta(0, "The capital")]
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (503, "upstream_unavailable", True)
    assert "The model is overloaded" in caught.value.message


async def test_stream_closed_before_its_finish_reason_is_a_bad_response_with_no_usage() -> None:
    """The body ends cleanly before the chunk with finishReason: the text so far, then a 502, and no UsageReport (the
    running usageMetadata has no candidatesTokenCount yet), so the gateway estimates, as for Anthropic."""
    frames = sse_bytes("stream-text").split(b"\r\n\r\n")
    assert b"finishReason" not in b"".join(frames[:2]) and b"usageMetadata" in frames[1]
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as caught:
        async for event in ADAPTER.parse_stream(sse.decode(_chunks(b"\r\n\r\n".join(frames[:2]) + b"\r\n\r\n", 50))):
            seen.append(event)

    assert seen == [TextDelta(0, "The"), TextDelta(0, " capital of France")]
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (502, "upstream_bad_response", False)
    assert "ended before the message did" in caught.value.message


async def test_an_empty_stream_is_a_bad_response() -> None:
    with pytest.raises(UpstreamError) as caught:
        await stream_events(b"")
    assert caught.value.status == 502


async def test_usage_counts_only_from_the_finishing_chunk_on() -> None:
    def chunk(text: str, finish: str | None, output: int | None) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        meta = {"promptTokenCount": 4, **({"candidatesTokenCount": output} if output is not None else {})}
        return b"data: " + orjson.dumps({"candidates": [candidate], "usageMetadata": meta}) + b"\r\n\r\n"

    events = await stream_events(chunk("a", None, None) + chunk("b", "STOP", 2))
    assert events == [TextDelta(0, "a"), TextDelta(0, "b"), Finish(0, "stop"), UsageReport(Usage(4, 2))]


@pytest.mark.parametrize("case", NON_STREAM_CASES)
async def test_stream_of_a_whole_answer_folds_back_to_the_same_answer(case: str) -> None:
    """The stream and non-stream paths share their mappers: one chunk holding the whole answer agrees."""
    body = orjson.dumps(fixture(case)["gemini_response"])
    events = await stream_events(b"data: " + body + b"\r\n\r\n")
    expected = expected_response(case)

    assert fold(events) == (expected.choices[0].message.parts, expected.choices[0].finish_reason, expected.usage)


def fold(events: list[StreamEvent]) -> tuple[tuple[Part, ...], FinishReason | None, Usage | None]:
    parts: list[Part] = []
    finish: FinishReason | None = None
    usage: Usage | None = None
    for event in events:
        match event:
            case TextDelta(text=text):
                parts.append(Text(text))
            case ReasoningDelta(text=text, signature=signature):
                parts.append(Reasoning(text, signature))
            case ToolCallDelta(id=call_id, name=name, arguments_fragment=arguments):
                parts.append(ToolCall(call_id or "", name or "", arguments))
            case Finish(reason=reason):
                finish = reason
            case UsageReport(usage=reported):
                usage = reported
    return tuple(parts), finish, usage


async def test_blocked_prompt_is_an_empty_filtered_answer_both_ways() -> None:
    # https://ai.google.dev/api/generate-content#PromptFeedback : no candidates, a blockReason.
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}

    assert ADAPTER.parse_response(orjson.dumps(blocked)) == answer((), "content_filter", Usage(7, 0))
    events = await stream_events(b"data: " + orjson.dumps(blocked) + b"\r\n\r\n")
    assert events == [Finish(0, "content_filter"), UsageReport(Usage(7, 0))]


@pytest.mark.parametrize(
    ("raw", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("LANGUAGE", "stop"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(raw: str, finish: FinishReason) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": raw}]}

    assert ADAPTER.parse_response(orjson.dumps(body)).choices[0].finish_reason == finish


def test_several_candidates_become_several_choices() -> None:
    body = {
        "candidates": [
            {"content": {"parts": [{"text": "A"}], "role": "model"}, "finishReason": "STOP", "index": 0},
            {"content": {"parts": [{"text": "B"}], "role": "model"}, "finishReason": "MAX_TOKENS", "index": 1},
        ]
    }

    choices = ADAPTER.parse_response(orjson.dumps(body)).choices

    assert choices == (
        Choice(0, Message("assistant", (Text("A"),)), "stop"),
        Choice(1, Message("assistant", (Text("B"),)), "length"),
    )


def test_garbage_is_a_502() -> None:
    for body in (b"not json", b"[]", b'{"candidates": "no"}', b"{}"):
        with pytest.raises(UpstreamError) as caught:
            ADAPTER.parse_response(body)
        assert (caught.value.status, caught.value.code) == (502, "upstream_bad_response")


# --- errors ----------------------------------------------------------------------------------------------

ERROR_CASES = [
    # case, caller status, code, retryable, retry_after, words from Google's message
    ("error-400-invalid-argument", 400, "upstream_invalid_request", False, None, "candidate_count: must be between"),
    ("error-400-api-key-invalid", 502, "upstream_auth_failed", False, None, "GEMINI_API_KEY"),
    ("error-403-permission-denied", 502, "upstream_auth_failed", False, None, "HTTP 403"),
    ("error-404-not-found", 502, "upstream_error", False, None, "models/gemini-3.6-flahs is not found"),
    ("error-429-resource-exhausted", 429, "upstream_rate_limited", True, 22, "You exceeded your current quota"),
    ("error-429-list-body", 429, "upstream_rate_limited", True, 7, "Resource has been exhausted"),
    ("error-500-internal", 502, "upstream_error", True, None, "An internal error has occurred"),
    ("error-503-unavailable", 503, "upstream_unavailable", True, None, "The model is overloaded"),
]


@pytest.mark.parametrize(("case", "status", "code", "retryable", "retry_after", "words"), ERROR_CASES)
def test_parse_error_maps_google_statuses(
    case: str, status: int, code: str, retryable: bool, retry_after: int | None, words: str
) -> None:
    reply = fixture(case)["gemini_error"]

    error = ADAPTER.parse_error(reply["status"], orjson.dumps(reply["body"]), reply["headers"])

    assert (error.status, error.code, error.retryable, error.retry_after) == (status, code, retryable, retry_after)
    assert words in error.message


def test_parse_error_without_json_quotes_the_body() -> None:
    error = ADAPTER.parse_error(502, b"<html>Bad Gateway</html>", {})

    assert (error.status, error.code) == (502, "upstream_error")
    assert "Bad Gateway" in error.message


# --- request mapping details ----------------------------------------------------------------------------


def build(body: dict[str, Any]) -> dict[str, Any]:
    request = parse_request(orjson.dumps({"model": "google/gemini-2.5-flash", **body}))
    built: dict[str, Any] = orjson.loads(ADAPTER.build_request(request, TARGET).body)
    return built


HI = [{"role": "user", "content": "Hi"}]


def test_openai_hints_that_change_no_answer_pass() -> None:
    """Codex-style clients send prompt_cache_key on every call (it was a 400)."""
    hints = {"prompt_cache_key": "repo-1", "prompt_cache_retention": "in_memory", "safety_identifier": "u-7"}
    assert build({"messages": HI, **hints, "service_tier": "default"}) == build({"messages": HI})
    with pytest.raises(InvalidRequest) as caught:
        build({"messages": HI, "service_tier": "flex"})
    assert caught.value.param == "service_tier"


def test_generation_config_fields() -> None:
    body = build(
        {
            "messages": HI,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "n": 2,
            "max_completion_tokens": 100,
            "stop": "END",
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "response_format": {"type": "json_object"},
            "user": "end-user-1",
            "metadata": {"k": "v"},
            "parallel_tool_calls": True,
            "logprobs": False,
        }
    )

    assert body["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.9,
        "seed": 7,
        "candidateCount": 2,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "responseMimeType": "application/json",
    }
    assert set(body) == {"contents", "generationConfig"}


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "strict": True}}]

    body = build({"messages": HI, "tools": tools, "tool_choice": choice})

    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert body["tools"] == [{"functionDeclarations": [{"name": "f"}]}]


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", {"thinkingBudget": 0}),
        ("minimal", {"thinkingBudget": 512, "includeThoughts": True}),
        ("low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("medium", {"thinkingBudget": 8192, "includeThoughts": True}),
        ("high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, thinking: dict[str, Any]) -> None:
    assert build({"messages": HI, "reasoning_effort": effort})["generationConfig"] == {"thinkingConfig": thinking}


def test_history_sends_thoughts_back_and_signatures_on_the_part_they_came_with() -> None:
    """The shape pydantic-ai sent Gemini after the reasoning fixture (recorded bb6990ab2ffe, answered 200)."""
    previous = ADAPTER.parse_response(orjson.dumps(fixture("reasoning")["gemini_response"])).choices[0].message
    request = ChatRequest(
        model="google/gemini-2.5-flash",
        messages=(Message("user", (Text("How do I cross the street?"),)), previous, Message("user", (Text("And?"),))),
    )

    contents = orjson.loads(ADAPTER.build_request(request, TARGET).body)["contents"]

    assert contents[1] == {
        "role": "model",
        "parts": [
            {"text": raw_part("reasoning", 0), "thought": True},
            {"text": raw_part("reasoning", 1), "thoughtSignature": raw_part("reasoning", 1, "thoughtSignature")},
        ],
    }


def test_tool_results_follow_their_calls_in_one_user_turn() -> None:
    calls = [
        {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_1", "type": "function", "function": {"name": "time", "arguments": ""}},
    ]
    body = build(
        {
            "messages": [
                *HI,
                {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_0", "content": "[1, 2]"},
                {"role": "user", "content": "Thanks"},
            ]
        }
    )

    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "time", "response": {"result": "12:00"}}},
                {"functionResponse": {"name": "weather", "response": {"result": "[1, 2]"}}},
                {"text": "Thanks"},
            ],
        },
    ]


def test_a_reused_call_id_names_the_latest_call() -> None:
    def turn(name: str) -> list[dict[str, Any]]:
        call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": "{}"}}
        return [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "{}"},
        ]

    body = build({"messages": [*HI, *turn("first"), *turn("second")]})

    names = [p["functionResponse"]["name"] for c in body["contents"] for p in c["parts"] if "functionResponse" in p]
    assert names == ["first", "second"]


@pytest.mark.parametrize(
    ("url", "part"),
    [
        (
            "https://x.test/a/cat.PNG?size=2",
            {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/a/cat.PNG?size=2"}},
        ),
        ("https://x.test/photo", {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/photo"}}),
        ("https://x.test/a.webp", {"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/a.webp"}}),
        ("data:image/gif;base64,R0lG", {"inlineData": {"mimeType": "image/gif", "data": "R0lG"}}),
    ],
)
def test_images(url: str, part: dict[str, Any]) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]

    assert build({"messages": [{"role": "user", "content": content}]})["contents"][0]["parts"] == [part]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"store": True}, "store"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}]}]},
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}
                ]
            },
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    *HI,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    *HI,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [*HI, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[1].tool_call_id"),
    ],
)
def test_what_gemini_cannot_take_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        build({"messages": HI, **body})

    assert caught.value.param == param
    assert caught.value.status == 400


# --- tool-call ids ---------------------------------------------------------------------------------------


def _call_ids(response: ChatResponse) -> list[str]:
    return [p.id for c in response.choices for p in c.message.parts if isinstance(p, ToolCall)]


def test_calls_gemini_sent_without_ids_get_ids_unique_across_turns_and_candidates() -> None:
    """Gemini 2.5 sends no functionCall.id: every answer's first call used to be call_0, in every turn of a loop."""
    turns = [fixture(case)["gemini_response"] for case in ("tool-call", "parallel-tool-calls", "tool-result")]
    call = {"functionCall": {"name": "f", "args": {}}}
    two_candidates = {
        "responseId": "two-candidates",
        "candidates": [{"content": {"parts": [call, call]}, "index": i, "finishReason": "STOP"} for i in (0, 1)],
    }
    no_response_id = {"candidates": [{"content": {"parts": [call]}, "finishReason": "STOP"}]}

    ids = [i for body in [*turns, two_candidates, no_response_id, no_response_id] for i in _call_ids(parse(body))]

    assert len(ids) == 1 + 3 + 1 + 4 + 1 + 1
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("call_") for i in ids)


def parse(body: dict[str, Any]) -> ChatResponse:
    return ADAPTER.parse_response(orjson.dumps(body))


async def test_streamed_calls_without_ids_get_distinct_ids_across_chunks_and_candidates() -> None:
    def chunk(index: int, name: str) -> bytes:
        part = {"functionCall": {"name": name, "args": {}}}
        body = {"responseId": "r1", "candidates": [{"content": {"parts": [part]}, "index": index}]}
        return b"data: " + orjson.dumps(body) + b"\r\n\r\n"

    done = [{"content": {"parts": []}, "index": i, "finishReason": "STOP"} for i in (0, 1)]
    last = b"data: " + orjson.dumps({"responseId": "r1", "candidates": done}) + b"\r\n\r\n"

    events = await stream_events(chunk(0, "a") + chunk(1, "b") + chunk(0, "c") + last)

    calls = [(e.index, e.call_index, e.name) for e in events if isinstance(e, ToolCallDelta)]
    ids = [e.id for e in events if isinstance(e, ToolCallDelta)]
    assert calls == [(0, 0, "a"), (1, 0, "b"), (0, 1, "c")]
    assert len(set(ids)) == 3


def test_gemini3_call_ids_are_kept_and_sent_back_on_the_call_and_its_result() -> None:
    """Recorded pydantic-ai turn 2 (answered 200) sends Gemini's id as functionCall.id and functionResponse.id."""
    case = fixture("gemini3-call-ids")
    [call] = [p for p in parse(case["gemini_response"]).choices[0].message.parts if isinstance(p, ToolCall)]
    assert (call.id, call.name) == ("0usajhl5", "load_capability")
    tool_call = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
    result = '{"instructions": "Use the refund policy tool before answering refund questions."}'
    history = [
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]

    contents = build({"messages": [*HI, *history]})["contents"][1:]

    recorded = case["next_request_contents"]
    assert contents[0]["parts"][0]["functionCall"] == recorded[0]["parts"][0]["functionCall"]
    assert contents[1]["parts"][0]["functionResponse"] == recorded[1]["parts"][0]["functionResponse"]


@pytest.mark.parametrize("case", ["tool-call", "no-response-id", "legacy"])
def test_ids_the_gateway_made_are_not_sent_to_gemini(case: str) -> None:
    if case == "legacy":  # the call_<n> ids earlier versions made
        call_id = "call_3"
    else:
        body = fixture("tool-call")["gemini_response"]
        if case == "no-response-id":
            body = {k: v for k, v in body.items() if k != "responseId"}
        call_id = _call_ids(parse(body))[0]
    tool_call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call_id, "content": "1"},
    ]

    contents = build({"messages": [*HI, *history]})["contents"][1:]

    assert contents[0]["parts"] == [{"functionCall": {"name": "get_weather", "args": {}}}]
    assert contents[1]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"result": "1"}}}]


def test_ids_from_other_providers_go_to_gemini_as_they_are() -> None:
    """Recorded pydantic-ai histories send OpenAI's call_… and its own pyd_ai_… ids to Gemini 2.5 and 3 (200)."""
    call_id = "call_30QT8bqUqQbKXjJMlRHv8XwI"
    tool_call = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "assistant", "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": call_id, "content": "1"},
    ]

    contents = build({"messages": [*HI, *history]})["contents"][1:]

    assert contents[0]["parts"][0]["functionCall"]["id"] == call_id
    assert contents[1]["parts"][0]["functionResponse"]["id"] == call_id
