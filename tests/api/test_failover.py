"""Failover through the running gateway with the openai SDK: retryable failures move to the next deployment or
fallback model, the caller is billed once at the served model's price, the log row counts the attempts; a 400 is
not retried; a deployment that keeps failing is skipped by its circuit breaker, and operators can see it."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from aipower import catalog as catalog_file
from aipower.app import create_app
from aipower.money import cost, usd_text
from aipower.storage.tables import request_log
from tests.billing_helpers import ledger_rows, on
from tests.conftest import Gateway, create_key, make_settings, provider_env
from tests.fakes.upstream import FakeUpstream, JsonReply, SlowReply
from tests.servers import free_port, serve

PRIMARY, BACKUP = "openai/gpt-4o-mini", "zhipu/glm-4-flash"  # the backup is much cheaper: billing shows who served
HELLO = [{"role": "user", "content": "Hello"}]
CATALOG = catalog_file.load()
BACKUP_COST = cost(12, 7, CATALOG.models[BACKUP].price)  # the fake upstream reports 12 prompt, 7 completion tokens


@contextlib.contextmanager
def fresh_gateway(gateway: Gateway, upstream_url: str, **overrides: Any) -> Iterator[tuple[str, str, str, str]]:
    """A gateway of its own (fresh breakers) and a new funded user: (base URL, email, key, key id)."""
    email = f"failover-{secrets.token_hex(4)}@example.com"
    key, key_id = create_key(gateway.database_url, email, Decimal(100))
    overrides.setdefault("operator_key_ids", (key_id,))
    with serve(create_app(make_settings(gateway.database_url, upstream_url, **overrides))) as url:
        yield f"{url}/v1", email, key, key_id


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def log_row(database_url: str, request_id: str) -> dict[str, Any]:
    async def read(engine: AsyncEngine) -> dict[str, Any]:
        query = select(request_log).where(request_log.c.request_id == request_id)
        async with engine.connect() as conn:
            return dict((await conn.execute(query)).mappings().one())

    return on(database_url, read)


def paths(upstream: FakeUpstream) -> list[str]:
    return [r.path for r in upstream.requests]


def error(status: int) -> JsonReply:
    return JsonReply({"error": {"message": f"upstream says {status}", "type": "x"}}, status=status)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 529])
def test_a_retryable_status_fails_over_and_bills_the_served_model_once(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str, status: int
) -> None:
    upstream.enqueue(error(status))
    with fresh_gateway(gateway, upstream_url) as (url, email, key, _), sdk(url, key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]}
        )
    reply = raw.parse()
    assert reply.model == BACKUP and reply.choices[0].message.content == "Hello from the fake upstream."
    assert paths(upstream) == ["/openai/chat/completions", "/zhipu/chat/completions"]
    assert [r.json["model"] for r in upstream.requests] == ["gpt-4o-mini", "glm-4-flash"]
    assert "models" not in upstream.requests[1].json  # the fallback list is the gateway's, never forwarded
    assert raw.headers["x-aipower-model"] == BACKUP
    assert raw.headers["x-aipower-route"] == f"fallback: {PRIMARY} -> {BACKUP}"
    assert raw.headers["x-aipower-cost"] == usd_text(BACKUP_COST)
    usage_rows = [amount for amount, reason in ledger_rows(gateway.database_url, email) if reason == "usage"]
    assert usage_rows == [-BACKUP_COST]
    row = log_row(gateway.database_url, raw.headers["x-request-id"])
    assert (row["status"], row["attempts"], row["model"], row["provider"]) == (200, 2, BACKUP, "zhipu")


def test_a_stream_fails_over_before_its_first_byte(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    upstream.enqueue(error(503))
    with fresh_gateway(gateway, upstream_url) as (url, _, key, _), sdk(url, key) as client:
        chunks = list(
            client.chat.completions.create(model=PRIMARY, messages=HELLO, stream=True, extra_body={"models": [BACKUP]})
        )
    assert {c.model for c in chunks} == {BACKUP}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert paths(upstream) == ["/openai/chat/completions", "/zhipu/chat/completions"]


def test_a_refused_connection_fails_over(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    env = provider_env(upstream_url, skip=frozenset({"minimax"}))
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with fresh_gateway(gateway, upstream_url, provider_env=env) as (url, _, key, _), sdk(url, key) as client:
        reply = client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
    assert reply.model == BACKUP
    assert paths(upstream) == ["/zhipu/chat/completions"]


def test_a_first_byte_timeout_fails_over(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    upstream.enqueue(SlowReply(1.0))
    with fresh_gateway(gateway, upstream_url, first_byte_timeout=0.2) as (url, _, key, _), sdk(url, key) as client:
        reply = client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
    assert reply.model == BACKUP
    assert paths(upstream) == ["/openai/chat/completions", "/zhipu/chat/completions"]


def test_a_400_is_not_retried_and_costs_nothing(gateway: Gateway, upstream: FakeUpstream, upstream_url: str) -> None:
    upstream.enqueue(error(400))
    with (
        fresh_gateway(gateway, upstream_url) as (url, email, key, _),
        sdk(url, key) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
    assert caught.value.code == "upstream_invalid_request"
    assert paths(upstream) == ["/openai/chat/completions"]
    assert [reason for _, reason in ledger_rows(gateway.database_url, email) if reason == "usage"] == []


def test_the_catalog_fallbacks_are_used_without_a_models_list(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    upstream.enqueue(error(502))  # qwen/qwen-plus: fallbacks = ["qwen/qwen-turbo"] in the shipped catalog
    with fresh_gateway(gateway, upstream_url) as (url, _, key, _), sdk(url, key) as client:
        raw = client.chat.completions.with_raw_response.create(model="qwen/qwen-plus", messages=HELLO)
    assert raw.parse().model == "qwen/qwen-turbo"
    assert [r.json["model"] for r in upstream.requests] == ["qwen-plus", "qwen-turbo"]


def test_the_last_error_is_returned_when_every_target_fails(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    upstream.enqueue(error(503), error(429))
    with (
        fresh_gateway(gateway, upstream_url) as (url, email, key, _),
        sdk(url, key) as client,
        pytest.raises(openai.RateLimitError),
    ):
        client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
    assert len(upstream.requests) == 2
    assert [reason for _, reason in ledger_rows(gateway.database_url, email) if reason == "usage"] == []


def test_an_open_breaker_is_skipped_and_shown_to_operators(
    gateway: Gateway, upstream: FakeUpstream, upstream_url: str
) -> None:
    upstream.enqueue(error(503), JsonReply({"choices": []}), error(503))  # openai fails, zhipu answers, openai fails
    settings: dict[str, Any] = {"breaker_failures": 2, "breaker_cooldown": 600}
    with fresh_gateway(gateway, upstream_url, **settings) as (url, _, key, _), sdk(url, key) as client:
        for _ in range(2):
            client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
        assert paths(upstream) == ["/openai/chat/completions", "/zhipu/chat/completions"] * 2
        upstream.requests.clear()
        reply = client.chat.completions.create(model=PRIMARY, messages=HELLO, extra_body={"models": [BACKUP]})
        assert reply.model == BACKUP and paths(upstream) == ["/zhipu/chat/completions"]  # openai is skipped
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=PRIMARY, messages=HELLO)  # no fallback left
        assert (caught.value.status_code, caught.value.code) == (503, "circuit_open")
        health = httpx.get(f"{url}/providers/health", headers={"Authorization": f"Bearer {key}"}).json()
    rows = {row["deployment"]: row for row in health["data"]}
    assert rows[f"{PRIMARY}@openai"]["state"] == "open"
    assert rows[f"{PRIMARY}@openai"]["consecutive_failures"] == 2
    assert rows[f"{PRIMARY}@openai"]["retry_in_seconds"] > 500
    assert (rows[f"{BACKUP}@zhipu"]["state"], rows[f"{BACKUP}@zhipu"]["calls"]) == ("closed", 3)
    assert rows[f"{BACKUP}@zhipu"]["error_rate"] == 0


def test_provider_health_is_for_operator_keys_only(gateway: Gateway, upstream_url: str) -> None:
    with fresh_gateway(gateway, upstream_url, operator_key_ids=("key_someone_else",)) as (url, _, key, _):
        denied = httpx.get(f"{url}/providers/health", headers={"Authorization": f"Bearer {key}"})
        anonymous = httpx.get(f"{url}/providers/health")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "operator_only"
    assert anonymous.status_code == 401
