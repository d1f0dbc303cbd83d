"""Failures as the openai SDK sees them: the right exception class, status and code, and never a provider key."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import openai
import pytest

from aipower.app import create_app
from aipower.cli.http_protocol import HeadWithBodyProtocol
from tests.api.conftest import dedicated_client
from tests.conftest import Gateway, make_settings, provider_env
from tests.fakes.upstream import FakeUpstream, JsonReply, RawReply, SlowReply, SseReply, stream_chunks
from tests.servers import free_port, serve

MODEL = "deepseek/deepseek-chat"
HELLO = [{"role": "user", "content": "Hello"}]
KEY = "sk-fake-deepseek-secret"


def test_bad_field_is_a_bad_request_naming_the_param(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=5)

    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"
    assert caught.value.code == "invalid_value"
    assert upstream.requests == []


def test_unknown_key_is_an_authentication_error(gateway: Gateway) -> None:
    with (
        openai.OpenAI(base_url=gateway.base_url, api_key="sk-aipower-not-a-real-key", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        stranger.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.code == "invalid_api_key"


def test_unknown_model_is_not_found(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="acme/imaginary-model", messages=HELLO)

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "acme/imaginary-model" in caught.value.message
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_rate_limit_passes_on_retry_after(client: openai.OpenAI, upstream: FakeUpstream, stream: bool) -> None:
    upstream.enqueue(JsonReply({"error": {"message": "Slow down"}}, status=429, headers={"Retry-After": "7"}))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.response.headers["retry-after"] == "7"
    assert "Slow down" in caught.value.message


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (JsonReply({"error": {"message": "Internal failure"}}, status=500), "upstream_error"),
        (RawReply(b"<html>Bad Gateway</html>", status=200, media_type="text/html"), "upstream_bad_response"),
        (RawReply(b"not json at all", status=200), "upstream_bad_response"),
    ],
    ids=["http-500", "html-200", "garbage-200"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_failure_is_a_502(
    client: openai.OpenAI, upstream: FakeUpstream, reply: JsonReply | RawReply, code: str, stream: bool
) -> None:
    if stream and reply.status == 200:
        reply = RawReply(reply.body, media_type="text/event-stream")  # a 200 stream of garbage
    upstream.enqueue(reply)

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    assert caught.value.status_code == 502
    assert caught.value.code == code


def test_unreachable_provider_is_a_503(gateway: Gateway, upstream_url: str) -> None:
    env = provider_env(upstream_url, skip=frozenset({"minimax"}))
    env["DEEPSEEK_BASE_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        dedicated_client(gateway, upstream_url, provider_env=env) as sdk,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        sdk.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"
    assert "DeepSeek" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_provider_timeout_is_a_503(gateway: Gateway, upstream: FakeUpstream, upstream_url: str, stream: bool) -> None:
    upstream.enqueue(SlowReply(1.0))
    with (
        dedicated_client(gateway, upstream_url, first_byte_timeout=0.2) as sdk,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"
    assert "0.2s" in caught.value.message


def test_unconfigured_provider_is_a_503_naming_the_variable(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="minimax/minimax-text-01", messages=HELLO)

    assert caught.value.status_code == 503
    assert caught.value.code == "provider_not_configured"
    assert "MINIMAX_API_KEY" in caught.value.message
    assert upstream.requests == []


def test_mid_stream_error_ends_the_stream_with_an_error_frame(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    first = stream_chunks("deepseek-chat", ["Hel"], usage=False)[:2]
    upstream.enqueue(SseReply((*first, {"error": {"message": "The model crashed"}}), done=False))

    received: list[str] = []
    with (
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream,
        pytest.raises(openai.APIError) as caught,
    ):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "Hel"
    assert "The model crashed" in caught.value.message
    assert caught.value.code == "upstream_error"


def test_mid_stream_error_frame_is_the_last_frame(http: httpx.Client, upstream: FakeUpstream) -> None:
    first = stream_chunks("deepseek-chat", ["Hel"], usage=False)[:2]
    upstream.enqueue(SseReply((*first, {"error": {"message": "The model crashed"}}), done=False))

    response = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": True})

    assert response.status_code == 200
    last = response.content.rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b'data: {"error":')
    assert b"[DONE]" not in response.content


OPAQUE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0.AbCdEfGhIjKlMnOp"  # Zhipu's form: nothing like sk- to spot it by


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_provider_key_of_any_form_never_reaches_the_caller(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str, stream: bool, path: str
) -> None:
    """The configured key itself is redacted wherever an upstream echoes it, the stream's error events included."""
    env = provider_env(upstream_url, skip=frozenset({"minimax"})) | {"DEEPSEEK_API_KEY": OPAQUE_KEY}
    error = {"error": {"message": f"Authorization failed for api key {OPAQUE_KEY}"}}
    upstream.enqueue(SseReply((error,), done=False) if stream else JsonReply(error, status=400))
    body: dict[str, Any] = {"model": MODEL, "stream": stream}
    body |= {"messages": HELLO} if path == "/chat/completions" else {"input": "Hello"}
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    with (
        serve(create_app(make_settings(gateway.database_url, upstream_url, provider_env=env))) as url,
        httpx.Client(base_url=f"{url}/v1", headers=headers, timeout=10) as http,
    ):
        response = http.post(path, json=body)

    assert b"Authorization failed" in response.content
    assert OPAQUE_KEY not in response.text
    assert "AbCdEfGhIjKlMnOp" not in response.text
    assert upstream.last.headers["authorization"] == f"Bearer {OPAQUE_KEY}"  # the upstream really had the key


ECHOES_THE_KEY: list[Any] = [
    JsonReply({"error": {"message": f"Incorrect API key provided: {KEY}"}}, status=401),
    JsonReply({"error": {"message": f"Key {KEY} may not use this model"}}, status=400),
    JsonReply({"error": {"message": f"Too many requests for Bearer {KEY}"}}, status=429),
    JsonReply({"error": {"message": f"crash while serving {KEY}"}}, status=500),
    RawReply(f"upstream proxy error, authorization: Bearer {KEY}".encode(), status=503, media_type="text/plain"),
    SseReply(({"error": {"message": f"quota exhausted for {KEY}"}},), done=False),
    SseReply(
        (*stream_chunks("deepseek-chat", ["Hi"], usage=False)[:2], {"error": {"message": f"bad {KEY}"}}), done=False
    ),
]


@pytest.mark.parametrize("reply", ECHOES_THE_KEY)
def test_provider_keys_never_reach_the_caller(http: httpx.Client, upstream: FakeUpstream, reply: Any) -> None:
    upstream.enqueue(reply)
    stream = isinstance(reply, SseReply)

    response = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": stream})

    assert b"error" in response.content
    assert KEY not in response.text
    assert "sk-fake" not in response.text
    assert upstream.last.headers["authorization"] == f"Bearer {KEY}"  # the upstream really had the key


def test_an_unexpected_error_is_a_500_envelope_and_the_connection_goes_on(gateway: Gateway, upstream_url: str) -> None:
    """A bug (here: the key store blowing up) answers the OpenAI envelope, and the caller's keep-alive connection
    stays open for its next call; dropping it made an SDK's next call fail with a connection error."""
    app = create_app(make_settings(gateway.database_url, upstream_url))

    async def broken(_request: object) -> object:
        raise RuntimeError("a bug")

    app.state.api.auth.caller = broken
    with serve(app, loop="uvloop", http=HeadWithBodyProtocol) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            answers = []
            for path in ("/v1/models", "/health"):
                sock.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
                received = b""
                while b"\r\n\r\n" not in received or not _whole(received):
                    chunk = sock.recv(65536)
                    assert chunk, f"the connection was closed after {answers}"
                    received += chunk
                answers.append(received)
    assert answers[0].startswith(b"HTTP/1.1 500 ") and b'"type":"server_error"' in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 200 ")


def _whole(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return len(body) >= length
