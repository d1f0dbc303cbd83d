"""Malformed chat requests, sent raw with httpx: the right 4xx in OpenAI's envelope, and the upstream never called."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream

MODEL = "deepseek/deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]


def body(**changes: Any) -> bytes:
    """A valid request with some fields replaced (a value of ... removes the field)."""
    request: dict[str, Any] = {"model": MODEL, "messages": HELLO}
    request.update(changes)
    return orjson.dumps({k: v for k, v in request.items() if v is not ...})


# (id, raw body, status, code, param)
CASES: list[tuple[str, bytes, int, str, str | None]] = [
    ("not-json", b'{"model": "deepseek/deepseek-chat", "messages": [', 400, "invalid_json", None),
    ("empty-body", b"", 400, "invalid_json", None),
    ("json-array", b'[{"model": "deepseek/deepseek-chat"}]', 400, "invalid_request_body", None),
    ("missing-model", body(model=...), 400, "missing_required_parameter", "model"),
    ("model-not-string", body(model=42), 400, "invalid_value", "model"),
    ("missing-messages", body(messages=...), 400, "missing_required_parameter", "messages"),
    ("empty-messages", body(messages=[]), 400, "invalid_value", "messages"),
    ("messages-not-list", body(messages={"role": "user", "content": "Hi"}), 400, "invalid_value", "messages"),
    ("unknown-role", body(messages=[{"role": "wizard", "content": "Hi"}]), 400, "invalid_value", "messages[0].role"),
    (
        "content-wrong-type",
        body(messages=[{"role": "user", "content": 7}]),
        400,
        "invalid_value",
        "messages[0].content",
    ),
    ("temperature-string", body(temperature="0.7"), 400, "invalid_value", "temperature"),
    ("temperature-too-high", body(temperature=2.5), 400, "invalid_value", "temperature"),
    ("max-tokens-zero", body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("n-zero", body(n=0), 400, "invalid_value", "n"),
    ("tools-not-list", body(tools={"type": "function"}), 400, "invalid_value", "tools"),
    (
        "tool-without-function",
        body(tools=[{"type": "function"}]),
        400,
        "missing_required_parameter",
        "tools[0].function",
    ),
    ("stream-not-bool", body(stream="yes"), 400, "invalid_value", "stream"),
    # JSON has no NaN or Infinity; the parser lets them through, and a field forwarded as it came reached the
    # provider as null.
    ("nan-in-a-forwarded-field", body(seed=...)[:-1] + b',"top_k":NaN}', 400, "invalid_value", "top_k"),
    (
        "infinity-in-a-tool-schema",
        body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"maximum": 1}}}]).replace(
            b'"maximum":1', b'"maximum":-Infinity'
        ),
        400,
        "invalid_value",
        "tools[0].function.parameters.maximum",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_refused_before_the_upstream(
    http: httpx.Client, upstream: FakeUpstream, raw: bytes, status: int, code: str, param: str | None
) -> None:
    response = http.post("/chat/completions", content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert upstream.requests == []


def test_body_over_the_limit_is_413(http: httpx.Client, upstream: FakeUpstream) -> None:
    huge = "x" * (1024 * 1024 + 1)  # the tests' AIPOWER_MAX_BODY_BYTES is 1 MiB

    response = http.post("/chat/completions", content=body(messages=[{"role": "user", "content": huge}]))

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert "AIPOWER_MAX_BODY_BYTES" in error["message"]
    assert upstream.requests == []


def test_chunked_body_over_the_limit_is_413(http: httpx.Client, upstream: FakeUpstream) -> None:
    """No Content-Length to trust: the gateway must count while it reads."""
    piece = b" " * 65536

    def chunks() -> Any:
        yield b'{"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "Hi"}]'
        for _ in range(17):
            yield piece
        yield b"}"

    response = http.post("/chat/completions", content=chunks())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []


HUGE = 123456789012345678901234567890  # past 64 bits: JSON allows it, no provider's encoder does


@pytest.mark.parametrize(
    "changes",
    [
        {"seed": HUGE},
        {"max_tokens": HUGE},
        {"some_provider_option": HUGE},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "maximum": HUGE}}}]},
    ],
    ids=["seed", "max_tokens", "extra-field", "tool-schema"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_integer_past_64_bits_is_a_400_and_the_connection_goes_on(
    http: httpx.Client, upstream: FakeUpstream, changes: dict[str, Any], stream: bool
) -> None:
    request = {"model": "openai/gpt-4o-mini", "messages": HELLO, "stream": stream, **changes}  # it takes a seed
    reply = http.post("/chat/completions", content=json.dumps(request))  # orjson cannot write HUGE either
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_value"
    assert upstream.requests == []
    assert http.get("/models").status_code == 200  # the same keep-alive connection still serves
