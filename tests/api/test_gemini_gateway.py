"""The gemini wire through the running gateway, driven by the openai SDK against the shared fake upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from aipower.providers.gemini.response import call_id_prefix
from tests.fakes.upstream import FakeUpstream, JsonReply, RawReply

FIXTURES = Path(__file__).parents[1] / "fakes" / "wire" / "gemini"
MODEL = "google/gemini-2.5-flash"
PATH = "/google/v1beta/models/gemini-2.5-flash"
KEY = "sk-fake-google-secret"


def fixture(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{case}.json").read_text())
    return data


def call_args(case: str, **changes: Any) -> dict[str, Any]:
    args = {**fixture(case)["openai_request"], **changes}
    for name in ("reasoning_effort",):  # SDK keyword arguments, everything else is too
        args.setdefault(name, openai.omit)
    return args


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def choice(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "index": 0,
        "message": {"role": "assistant", "refusal": None, **message},
        "logprobs": None,
        "finish_reason": finish,
    }


def made_id(response_id: str, ordinal: int) -> str:
    """The id the gateway gives a call Gemini 2.5 sent without one."""
    return f"{call_id_prefix(response_id, 0)}{ordinal}"


def response_id(case: str) -> str:
    value: str = fixture(case)["gemini_response"]["responseId"]
    return value


def part(case: str, index: int, key: str = "text") -> str:
    value: str = fixture(case)["gemini_response"]["candidates"][0]["content"]["parts"][index][key]
    return value


def expected_body(case: str) -> dict[str, Any]:
    match case:
        case "plain-text":
            return {
                "choices": [choice({"content": "The capital of France is **Paris**."}, "stop")],
                "usage": usage(8, 8),
            }
        case "max-tokens":
            return {"choices": [choice({"content": "The capital of France is"}, "length")], "usage": usage(15, 5)}
        case "image-base64":
            body = choice({"content": part(case, 0)}, "stop")
            return {"choices": [body], "usage": usage(345, 221, cached=191, reasoning=141)}
        case "reasoning":
            message = {"content": part(case, 1), "reasoning_content": part(case, 0)}
            return {"choices": [choice(message, "stop")], "usage": usage(29, 1737, reasoning=1001)}
        case "tool-call":
            call = {
                "id": made_id(response_id(case), 0),
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
            return {
                "choices": [choice({"content": None, "tool_calls": [call]}, "tool_calls")],
                "usage": usage(49, 63, reasoning=48),
            }
        case "parallel-tool-calls":
            calls = [
                {
                    "id": made_id(response_id(case), n),
                    "type": "function",
                    "function": {"name": "generate_topic", "arguments": "{}"},
                }
                for n in range(3)
            ]
            return {
                "choices": [choice({"content": None, "tool_calls": calls}, "tool_calls")],
                "usage": usage(83, 220, reasoning=190),
            }
        case "tool-result":
            arguments = '{"city":"Mexico City","country":"Mexico"}'
            call_id = made_id(response_id(case), 0)
            call = {"id": call_id, "type": "function", "function": {"name": "final_result", "arguments": arguments}}
            return {"choices": [choice({"content": None, "tool_calls": [call]}, "tool_calls")], "usage": usage(47, 8)}
        case "json-schema":
            text = '{"value":"A","children":[{"value":"B"},{"value":"C"}]}'
            return {"choices": [choice({"content": text}, "stop")], "usage": usage(20, 199, reasoning=183)}
    raise AssertionError(case)


CASES = [
    "plain-text",
    "max-tokens",
    "image-base64",
    "reasoning",
    "tool-call",
    "parallel-tool-calls",
    "tool-result",
    "json-schema",
]


@pytest.mark.parametrize("case", CASES)
def test_answer_is_the_exact_openai_json(client: openai.OpenAI, upstream: FakeUpstream, case: str) -> None:
    upstream.enqueue(JsonReply(fixture(case)["gemini_response"]))

    raw = client.chat.completions.with_raw_response.create(**call_args(case))

    body = raw.http_response.json()
    body["usage"].pop("cost", None)  # the price is the billing tests' business; tokens are this adapter's
    assert {k: v for k, v in body.items() if k not in ("id", "created")} == {
        "object": "chat.completion",
        "model": MODEL,
        **expected_body(case),
    }
    assert upstream.last.path == f"{PATH}:generateContent"
    assert upstream.last.headers["x-goog-api-key"] == KEY
    assert "authorization" not in upstream.last.headers
    assert upstream.last.json == fixture(case)["gemini_request"]


def as_gemini_stream(response: dict[str, Any]) -> bytes:
    """A whole answer streamed the way Gemini does it: one part per chunk, finishReason and usage on the last."""
    candidate = response["candidates"][0]
    parts = candidate["content"]["parts"]
    frames = []
    for n, one in enumerate(parts):
        chunk: dict[str, Any] = {"candidates": [{"content": {"parts": [one], "role": "model"}, "index": 0}]}
        chunk["responseId"] = response["responseId"]  # every chunk of a Gemini stream repeats it
        if n == len(parts) - 1:
            chunk["candidates"][0]["finishReason"] = candidate["finishReason"]
            chunk["usageMetadata"] = response["usageMetadata"]
        else:
            chunk["usageMetadata"] = {"promptTokenCount": response["usageMetadata"]["promptTokenCount"]}
        frames.append(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
    return b"".join(frames)


@pytest.mark.parametrize("case", CASES)
def test_stream_reassembled_by_the_sdk_equals_the_answer(
    client: openai.OpenAI, upstream: FakeUpstream, case: str
) -> None:
    response = fixture(case)["gemini_response"]
    upstream.enqueue(JsonReply(response), RawReply(as_gemini_stream(response), media_type="text/event-stream"))
    whole = client.chat.completions.create(**call_args(case))

    with client.chat.completions.stream(**call_args(case, stream_options={"include_usage": True})) as stream:
        final = stream.until_done().current_completion_snapshot  # get_final_completion() refuses "length"

    assert upstream.last.path == f"{PATH}:streamGenerateContent"
    assert upstream.last.json == fixture(case)["gemini_request"]
    got, want = final.choices[0], whole.choices[0]
    assert (got.message.content, got.finish_reason) == (want.message.content, want.finish_reason)
    assert calls(got.message.tool_calls) == calls(want.message.tool_calls)
    assert (got.message.model_extra or {}).get("reasoning_content") == (want.message.model_extra or {}).get(
        "reasoning_content"
    )
    assert final.usage is not None and whole.usage is not None
    assert final.usage.model_dump(exclude={"cost"}) == whole.usage.model_dump(exclude={"cost"})


def calls(tool_calls: Any) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in tool_calls or ()]


def test_recorded_stream_with_usage_chunk(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(RawReply((FIXTURES / "stream-text.sse").read_bytes(), media_type="text/event-stream"))

    with client.chat.completions.create(**call_args("stream-text")) as stream:
        chunks = list(stream)

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The capital of France is Paris.\n"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    reported = chunks[-1].usage.model_dump(exclude_none=True)
    assert {k: v for k, v in reported.items() if k != "cost"} == usage(13, 8)
    assert upstream.last.json == fixture("stream-text")["gemini_request"]


def test_recorded_tool_call_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    data = (FIXTURES / "stream-tool-call.sse").read_bytes()
    upstream.enqueue(RawReply(data, media_type="text/event-stream"))

    args = call_args("stream-tool-call")
    del args["stream"]  # the SDK's stream() helper sets it itself
    with client.chat.completions.stream(**args) as stream:
        final = stream.get_final_completion()

    [call] = final.choices[0].message.tool_calls or []
    first_id = json.loads(data.split(b"\r\n\r\n")[0].removeprefix(b"data: "))["responseId"]
    assert (call.id, call.function.name, call.function.arguments) == (
        made_id(first_id, 0),
        "get_capital",
        '{"country":"France"}',
    )
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_503_is_a_503(client: openai.OpenAI, upstream: FakeUpstream, stream: bool) -> None:
    reply = fixture("error-503-unavailable")["gemini_error"]
    upstream.enqueue(JsonReply(reply["body"], status=503))

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(**call_args("plain-text"), stream=stream)

    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"
    assert "The model is overloaded" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_is_a_rate_limit_error_with_retry_after(
    client: openai.OpenAI, upstream: FakeUpstream, stream: bool
) -> None:
    reply = fixture("error-429-resource-exhausted")["gemini_error"]
    upstream.enqueue(JsonReply(reply["body"], status=429))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**call_args("plain-text"), stream=stream)

    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.response.headers["retry-after"] == "22"  # from google.rpc.RetryInfo "21.5s"
    assert "You exceeded your current quota" in caught.value.message


def test_bad_request_quotes_google(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = fixture("error-400-invalid-argument")["gemini_error"]
    upstream.enqueue(JsonReply(reply["body"], status=400))

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**call_args("plain-text"), n=9)

    assert caught.value.code == "upstream_invalid_request"
    assert "candidate_count: must be between 1 and 8" in caught.value.message


def test_mid_stream_error_raises_while_iterating(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(RawReply((FIXTURES / "stream-error.sse").read_bytes(), media_type="text/event-stream"))

    received: list[str] = []
    with (
        client.chat.completions.create(**call_args("stream-error")) as stream,
        pytest.raises(openai.APIError) as caught,
    ):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

    assert "".join(received) == "The capital"
    assert "The model is overloaded" in caught.value.message


def test_unsupported_field_is_a_400_before_any_upstream_call(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**call_args("plain-text"), logit_bias={"42": 1})

    assert caught.value.param == "logit_bias"
    assert upstream.requests == []
