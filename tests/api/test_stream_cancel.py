"""A caller that walks away mid-stream stops the upstream request at once."""

from __future__ import annotations

import httpx
import openai

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
