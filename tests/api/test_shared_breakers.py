"""Circuit breakers shared through Redis: two gateway instances (same database, same Redis prefix) see one breaker
per deployment. Failures seen by one open it for the other; the cool-down, the probe and the latency averages are
shared too. The cool-down is real time here (a short setting, waited for with a bounded loop)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from aipower.app import create_app
from tests.conftest import Gateway, create_key, make_settings
from tests.fakes.upstream import FakeUpstream, JsonReply
from tests.redis_service import new_prefix, prefix_cleanup, require_redis
from tests.servers import serve

PRIMARY, BACKUP = "openai/gpt-4o-mini", "zhipu/glm-4-flash"
HELLO = [{"role": "user", "content": "Hello"}]
COOLDOWN = 2.0


@contextlib.contextmanager
def two_gateways(gateway: Gateway, upstream_url: str) -> Iterator[tuple[str, str, str]]:
    """Two instances sharing the database and a fresh Redis prefix: (URL of A, URL of B, an operator key)."""
    redis_url = require_redis()
    key, key_id = create_key(gateway.database_url, f"shared-{secrets.token_hex(4)}@example.com", Decimal(100))
    with prefix_cleanup(new_prefix()) as prefix:
        settings = make_settings(
            gateway.database_url,
            upstream_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            breaker_failures=2,
            breaker_cooldown=COOLDOWN,
            operator_key_ids=(key_id,),
        )
        with serve(create_app(settings)) as first, serve(create_app(settings)) as second:
            yield f"{first}/v1", f"{second}/v1", key


def call(base_url: str, key: str, *fallbacks: str) -> str:
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        body = {"models": list(fallbacks)} if fallbacks else None
        return client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body=body).model


def primary_health(base_url: str, key: str) -> dict[str, Any]:
    rows = httpx.get(f"{base_url}/providers/health", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    return next(row for row in rows if row["deployment"] == f"{PRIMARY}@openai")


def wait_for_state(base_url: str, key: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + COOLDOWN + 10
    while (health := primary_health(base_url, key))["state"] != state:
        assert time.monotonic() < deadline, f"the breaker never became {state}: {health}"
        time.sleep(0.05)
    return health


def paths(upstream: FakeUpstream) -> list[str]:
    return [r.path for r in upstream.requests]


def test_failures_seen_by_one_instance_open_the_breaker_for_the_other(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    down = JsonReply({"error": {"message": "upstream says 503", "type": "x"}}, status=503)
    with two_gateways(gateway, upstream_url) as (first, second, key):
        for _ in range(2):
            upstream.enqueue(down)  # the primary fails; the backup answers
            assert call(first, key, BACKUP) == BACKUP
        upstream.requests.clear()
        assert call(second, key, BACKUP) == BACKUP  # B never saw a failure, yet skips the primary
        assert paths(upstream) == ["/zhipu/chat/completions"]
        health = primary_health(second, key)
        assert (health["state"], health["consecutive_failures"], health["calls"]) == ("open", 2, 2)
        with pytest.raises(openai.InternalServerError) as caught:
            call(second, key)
        assert caught.value.code == "circuit_open"
        wait_for_state(first, key, "half-open")  # the cool-down ends for both
        upstream.requests.clear()
        assert call(second, key) == PRIMARY  # B's probe succeeds and closes the breaker for A as well
        assert paths(upstream) == ["/openai/chat/completions"]
        closed = wait_for_state(first, key, "closed")  # within AIPOWER_HEALTH_SYNC_SECONDS
        assert (closed["state"], closed["consecutive_failures"], closed["calls"]) == ("closed", 0, 3)


def test_a_failed_probe_on_one_instance_keeps_the_other_away(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    down = JsonReply({"error": {"message": "upstream says 503", "type": "x"}}, status=503)
    with two_gateways(gateway, upstream_url) as (first, second, key):
        for instance in (first, second):  # one failure seen by each instance: two in a row
            upstream.enqueue(down)
            assert call(instance, key, BACKUP) == BACKUP
        wait_for_state(second, key, "half-open")
        upstream.enqueue(down)
        upstream.requests.clear()
        assert call(first, key, BACKUP) == BACKUP  # A's probe fails: open for another cool-down
        assert call(second, key, BACKUP) == BACKUP
        assert paths(upstream) == ["/openai/chat/completions", "/zhipu/chat/completions", "/zhipu/chat/completions"]
        assert primary_health(second, key)["state"] == "open"


def test_stream_latency_measured_by_one_instance_is_read_by_the_other(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    with two_gateways(gateway, upstream_url) as (first, second, key):
        assert primary_health(second, key)["ttft_ms"] is None
        with openai.OpenAI(base_url=first, api_key=key, max_retries=0) as client:
            chunks = list(
                client.chat.completions.create(
                    model=PRIMARY, messages=HELLO, stream=True, stream_options={"include_usage": True}
                )
            )
        assert chunks and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        deadline = time.monotonic() + 5  # samples are shared within about twice AIPOWER_HEALTH_SYNC_SECONDS
        while (health := primary_health(second, key))["tokens_per_s"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
    assert health["ttft_ms"] > 0 and health["tokens_per_s"] > 0 and health["calls"] == 1
