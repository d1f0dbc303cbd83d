"""`aipower serve` with AIPOWER_HTTP2=1: callers (or a balancer) speaking HTTP/2 over cleartext, many calls on one
connection, with the openai Python SDK on an HTTP/2-only httpx client."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.billing_helpers import balance_of, verify
from tests.conftest import create_key, provider_env
from tests.e2e.conftest import aipower_serve, clean_environ
from tests.e2e.test_serve import MODEL, make_key
from tests.fakes.upstream import FakeUpstream, SlowReply, SseReply, stream_chunks

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
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake, fake_url = upstream, fake_upstream_server[1]
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


class RawH2c:
    """A bare HTTP/2 client over a socket (the h2 library): unlike httpx, it can reset one stream, as browsers and
    Node do when a caller stops reading (httpx leaves the stream open and drops what arrives)."""

    def __init__(self, url: str) -> None:
        self.authority = url.removeprefix("http://")
        host, port = self.authority.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._flush()

    def post(self, path: str, key: str, body: dict[str, object]) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", self.authority)]
        headers += [("authorization", f"Bearer {key}"), ("content-type", "application/json")]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, orjson.dumps(body), end_stream=True)
        self._flush()
        return stream_id

    def read(self, stream_id: int, until: bytes) -> bytes:
        """The stream's data so far, once it contains `until` (or the stream ended)."""
        received = b""
        while until not in received:
            for event in self.conn.receive_data(self.sock.recv(65536)):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    received += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    return received
            self._flush()
        return received

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())


def test_an_h2c_caller_that_resets_its_stream_stops_the_upstream_and_pays_once(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    """HTTP/2 ends one stream (RST_STREAM), not the connection: the gateway must still see the caller go, cut the
    upstream off, settle the call, and keep serving the connection's other streams."""
    fake, fake_url = upstream, fake_upstream_server[1]  # `upstream`: the fake, reset for this test
    providers = provider_env(fake_url, skip=frozenset({"minimax"}))
    env = clean_environ({"AIPOWER_DATABASE_URL": database_url, "AIPOWER_HTTP2": "1", **providers})
    email = f"h2c-{secrets.token_hex(4)}@example.com"
    key, _ = create_key(database_url, email)
    fake.enqueue(SseReply(stream_chunks("deepseek-chat", ["Once"], usage=False)[:2], hang=True))
    with aipower_serve(env, tmp_path) as served:
        client = RawH2c(served.url)
        with contextlib.closing(client.sock):
            stream = client.post("/v1/chat/completions", key, {"model": MODEL, "messages": PROMPT, "stream": True})
            assert b'"content":"Once"' in client.read(stream, until=b'"content":"Once"')
            assert not fake.stream_closed.is_set()
            client.reset(stream)
            assert fake.stream_closed.wait(timeout=2.0)  # the reset reached the upstream

            deadline = time.monotonic() + 5
            while balance_of(database_url, email).held_nanos and time.monotonic() < deadline:
                time.sleep(0.05)
            assert balance_of(database_url, email).held_nanos == 0  # settled, not left held
            assert verify(database_url) == []

            again = client.post("/v1/chat/completions", key, {"model": MODEL, "messages": PROMPT})
            assert b"Hello from the fake upstream." in client.read(again, until=b"Hello from the fake upstream.")
