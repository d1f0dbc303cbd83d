"""`aipower serve` with AIPOWER_HTTP2=1: callers (or a balancer) speaking HTTP/2 over cleartext, many calls on one
connection, with the openai Python SDK on an HTTP/2-only httpx client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import provider_env
from tests.e2e.conftest import aipower_serve, clean_environ
from tests.e2e.test_serve import MODEL, make_key
from tests.fakes.upstream import FakeUpstream, SlowReply

PROMPT = [{"role": "user", "content": "Hi"}]


def test_h2c_callers_get_completions_streams_and_errors(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    _, fake_url = fake_upstream_server
    providers = provider_env(fake_url, skip=frozenset({"minimax"}))
    env = clean_environ({"AIPOWER_DATABASE_URL": database_url, "AIPOWER_HTTP2": "1", **providers})
    with aipower_serve(env, tmp_path) as served:
        assert "HTTP/1.1 and HTTP/2 cleartext (h2c)" in served.output()
        key = make_key(env, tmp_path)
        h2 = httpx.Client(http1=False, http2=True)  # prior knowledge: the first bytes are HTTP/2's preface
        with OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=20, http_client=h2) as client:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT)
            assert raw.http_response.http_version == "HTTP/2"
            assert raw.parse().choices[0].message.content == "Hello from the fake upstream."

            stream = client.chat.completions.create(
                model=MODEL, messages=PROMPT, stream=True, stream_options={"include_usage": True}
            )
            with stream:
                chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

        wrong = httpx.Client(http1=False, http2=True)
        with OpenAI(base_url=f"{served.url}/v1", api_key="sk-aipower-wrong", max_retries=0, http_client=wrong) as bad:
            with pytest.raises(openai.AuthenticationError) as refused:
                bad.chat.completions.create(model=MODEL, messages=PROMPT)
            assert refused.value.response.http_version == "HTTP/2"
            assert refused.value.body is not None and refused.value.code == "invalid_api_key"

        with OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=20) as http1:  # the default
            raw = http1.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT)
            assert raw.http_response.http_version == "HTTP/1.1"
            assert raw.parse().choices[0].message.content == "Hello from the fake upstream."
    assert len(upstream.requests) == 3


async def test_h2c_streams_in_flight_together_share_one_connection(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    fake, fake_url = fake_upstream_server
    providers = provider_env(fake_url, skip=frozenset({"minimax"}))
    env = clean_environ({"AIPOWER_DATABASE_URL": database_url, "AIPOWER_HTTP2": "1", **providers})
    with aipower_serve(env, tmp_path) as served:
        key = make_key(env, tmp_path)
        fake.enqueue(*[SlowReply(1.0)] * 20)  # each stream waits a second upstream before its first chunk
        limits = httpx.Limits(max_connections=1)  # over HTTP/1.1 these 20 would take turns: 20 seconds
        h2 = httpx.AsyncClient(http1=False, http2=True, limits=limits)
        async with AsyncOpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, http_client=h2) as client:

            async def one() -> str:
                stream = await client.chat.completions.create(model=MODEL, messages=PROMPT, stream=True)
                async with stream:
                    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            started = time.monotonic()
            assert await asyncio.gather(*(one() for _ in range(20))) == ["Hello"] * 20
            assert time.monotonic() - started < 8  # side by side on the one connection
