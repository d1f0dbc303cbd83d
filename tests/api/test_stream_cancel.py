"""A caller that walks away mid-stream stops the upstream request at once; an upstream gone silent is cut off."""

from __future__ import annotations

import time
from dataclasses import replace

import httpx
import openai
import pytest

from tests.api.conftest import dedicated_client
from tests.conftest import Gateway
from tests.fakes.upstream import FakeUpstream, SseReply, stream_chunks

MODEL = "deepseek/deepseek-chat"
HELLO = [{"role": "user", "content": "Tell me a long story"}]


def hanging_stream() -> SseReply:
    """One content chunk, then keep-alives forever: only a disconnect ends it."""
    return SseReply(stream_chunks("deepseek-chat", ["Once"], usage=False)[:2], hang=True)


def test_closing_an_sdk_stream_closes_the_upstream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.enqueue(hanging_stream())

    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    with stream:
        first = next(chunk for chunk in stream if chunk.choices[0].delta.content)
        assert first.choices[0].delta.content == "Once"
        assert not upstream.stream_closed.is_set()

    assert upstream.stream_closed.wait(timeout=1.0)


def test_closing_a_raw_stream_closes_the_upstream(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(hanging_stream())

    with http.stream("POST", "/chat/completions", json={"model": MODEL, "messages": HELLO, "stream": True}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept referenced: dropping the iterator would close the response early
        assert next(lines).startswith('data: {"id":"chatcmpl-')
        assert not upstream.stream_closed.is_set()

    assert upstream.stream_closed.wait(timeout=1.0)


def test_an_upstream_silent_mid_stream_ends_the_stream_with_an_error(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    """AIPOWER_STREAM_IDLE_TIMEOUT: after `idle` seconds (at most an eighth more) without a chunk, the caller gets an
    OpenAI error frame naming the cause, and the upstream connection is closed."""
    upstream.enqueue(replace(hanging_stream(), silent=True))
    with dedicated_client(gateway, upstream_url, stream_idle_timeout=0.8) as sdk:
        stream = sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=HELLO, stream=True)
        text: list[str] = []
        with pytest.raises(openai.APIError, match=r"sent nothing for 0\.8s mid-stream"):
            for chunk in stream:
                text.append(chunk.choices[0].delta.content or "")
                began = time.monotonic()
        waited = time.monotonic() - began
    assert "".join(text) == "Once"
    assert 0.7 <= waited <= 0.8 * 1.125 + 0.4, waited
    assert upstream.stream_closed.wait(5)
