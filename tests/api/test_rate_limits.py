"""Rate limits through the running gateway with the official SDK: the demo key, rpm, tpm, concurrency, headers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from aipower.app import create_app
from aipower.storage import keys as key_store
from aipower.storage.reports import SqlAccountReader
from tests.billing_helpers import on, user_id
from tests.conftest import Gateway, make_settings
from tests.fakes.upstream import FakeUpstream, JsonReply, SlowReply, completion
from tests.redis_service import PrivateRedis
from tests.servers import free_port, serve

CHEAP = "deepseek/deepseek-chat"
HELLO = [{"role": "user", "content": "hi"}]
DEMO = "sk-aipower-demo-public"


@contextlib.contextmanager
def gateway_with(gateway: Gateway, upstream_url: str, **overrides: object) -> Iterator[str]:
    """A separate gateway (same database) with its own settings and its own in-process counters."""
    settings = make_settings(gateway.database_url, upstream_url, **overrides)
    with serve(create_app(settings)) as url:
        yield f"{url}/v1"


def sdk(base_url: str, key: str, ip: str | None = None, retries: int = 0) -> openai.OpenAI:
    headers = {"x-forwarded-for": ip} if ip else None
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=retries, default_headers=headers)


def test_demo_key_five_calls_per_ip_then_429(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    with gateway_with(gateway, upstream_url, trusted_proxies=("127.0.0.1",)) as url:
        with sdk(url, DEMO, ip="203.0.113.10") as demo:
            for _ in range(5):
                assert demo.chat.completions.create(model=CHEAP, messages=HELLO).choices
            with pytest.raises(openai.RateLimitError) as info:
                demo.chat.completions.create(model=CHEAP, messages=HELLO)
            with pytest.raises(openai.PermissionDeniedError) as premium:
                demo.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
        with sdk(url, DEMO, ip="203.0.113.11") as other_ip:
            for _ in range(5):  # another address has its own five
                assert other_ip.chat.completions.create(model="qwen/qwen-turbo", messages=HELLO).choices
            with pytest.raises(openai.RateLimitError):
                other_ip.chat.completions.create(model="qwen/qwen-turbo", messages=HELLO)
    assert info.value.code == "demo_quota_exceeded"
    retry_after = int(info.value.response.headers["retry-after"])
    assert 0 < retry_after <= 86_400
    assert "sign up" in premium.value.message.lower()
    assert premium.value.code == "model_not_allowed_on_demo_key"
    assert len(upstream.requests) == 10


def test_an_untrusted_forwarded_for_header_is_ignored(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    with gateway_with(gateway, upstream_url, demo_daily_calls=2) as url:
        for ip in ("198.51.100.1", "198.51.100.2"):
            with sdk(url, DEMO, ip=ip) as demo:
                demo.chat.completions.create(model=CHEAP, messages=HELLO)
        with sdk(url, DEMO, ip="198.51.100.3") as demo, pytest.raises(openai.RateLimitError):
            demo.chat.completions.create(model=CHEAP, messages=HELLO)  # all three were the same peer


def test_demo_calls_are_free_and_recorded(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    """Free to the caller, and recorded for the operator at list price against the demo account (whose records no
    demo caller may read: the demo key is shared)."""
    with gateway_with(gateway, upstream_url) as url, sdk(url, DEMO) as demo:
        reply = demo.chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO)
        lookup = httpx.get(f"{url}/generation/{reply.parse().id}", headers={"authorization": f"Bearer {DEMO}"})
    demo_account = user_id(gateway.database_url, key_store.DEMO_EMAIL)
    entry = on(gateway.database_url, lambda engine: SqlAccountReader(engine).generation(demo_account, reply.parse().id))
    assert reply.headers["x-aipower-cost"] == "0.00"
    assert entry is not None and entry.billing_mode == "demo"
    assert entry.charged_nanos == 0 and entry.cost_nanos > 0
    assert (lookup.status_code, lookup.json()["error"]["code"]) == (403, "not_available_on_demo_key")


def test_requests_per_minute_429_with_headers(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    with gateway_with(gateway, upstream_url, default_rpm=3) as url, sdk(url, gateway.api_key) as client:
        first = client.chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO)
        for _ in range(2):
            client.chat.completions.create(model=CHEAP, messages=HELLO)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=CHEAP, messages=HELLO)
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    headers = info.value.response.headers
    assert info.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert len(upstream.requests) == 3


def test_the_sdk_backs_off_and_succeeds(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    settings = {"default_rpm": 2, "rate_window_seconds": 2}
    with gateway_with(gateway, upstream_url, **settings) as url, sdk(url, gateway.api_key, retries=3) as client:
        replies = [client.chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO) for _ in range(5)]
    assert [r.status_code for r in replies] == [200] * 5
    # Five calls in well under two windows of two: at least one was refused, and the SDK waited and retried.
    assert sum(r.retries_taken for r in replies) >= 1
    assert len(upstream.requests) == 5


def test_tokens_per_minute(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    with gateway_with(gateway, upstream_url, default_tpm=100) as url, sdk(url, gateway.api_key) as client:
        ok = client.chat.completions.with_raw_response.create(model=CHEAP, messages=HELLO, max_tokens=40)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=CHEAP, messages=HELLO, max_tokens=90)
    assert ok.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 60
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] != "100"
    assert len(upstream.requests) == 1


def test_concurrent_requests_per_key(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    upstream.enqueue(SlowReply(1.0, JsonReply(completion("deepseek-chat", "slow"))))
    with gateway_with(gateway, upstream_url, max_concurrent_per_key=1) as url, sdk(url, gateway.api_key) as client:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(client.chat.completions.create, model=CHEAP, messages=HELLO)
            assert upstream.received.wait(5)
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model=CHEAP, messages=HELLO)
            assert slow.result(timeout=10).choices[0].message.content == "slow"
        client.chat.completions.create(model=CHEAP, messages=HELLO)  # the slot came back
    assert info.value.code == "too_many_concurrent_requests"


def test_failed_authentications_are_limited_per_ip(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    with gateway_with(gateway, upstream_url, auth_failures_per_minute=3) as url:
        for _ in range(3):
            with sdk(url, "sk-aipower-guess") as guess, pytest.raises(openai.AuthenticationError):
                guess.models.list()
        with sdk(url, gateway.api_key) as client, pytest.raises(openai.RateLimitError) as info:
            client.models.list()
    assert info.value.code == "too_many_failed_authentications"


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_outage_keeps_the_policy_and_recovers(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str, tmp_path: Path, policy: str
) -> None:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    settings = {"redis_url": server.url, "redis_prefix": "outage:", "redis_failure_policy": policy, "default_rpm": 50}
    try:
        with gateway_with(gateway, upstream_url, **settings) as url, sdk(url, gateway.api_key) as client:
            client.chat.completions.create(model=CHEAP, messages=HELLO)
            assert _counters(server) > 0  # the limits live in Redis
            server.stop()
            during = [_status(client) for _ in range(10)]
            server.start()
            after = _wait_for_redis_counters(client, server)
    finally:
        server.stop()
    # Every request answered, per the policy. Closed: the calls this process's leases still cover (counted in Redis
    # before it went down) go on, then 503 (a lease is at most 1/8 of what the minute had left: 6 calls of 50 here).
    if policy == "open":
        assert during == [200] * 10
    else:
        assert during == sorted(during) and during.count(503) >= 4, during
    assert after == 200


def _status(client: openai.OpenAI) -> int:
    try:
        client.chat.completions.create(model=CHEAP, messages=HELLO)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def _counters(server: PrivateRedis) -> int:
    with redis.Redis.from_url(server.url) as r:
        return len(list(r.scan_iter(match="outage:rl:*")))  # the limiter's (breakers write outage:health:*)


def _wait_for_redis_counters(client: openai.OpenAI, server: PrivateRedis) -> int:
    """Call until the gateway writes to the restarted Redis again (it retries Redis once a second)."""
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = _status(client)
        if _counters(server) > 0:
            return status
        time.sleep(0.2)  # the gateway retries Redis once a second; nothing to wait on from outside
    return -1
