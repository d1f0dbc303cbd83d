"""API keys on /v1: each way a key can be wrong is its own 401 code, and the key is never echoed back."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
import pytest

from aipower.app import create_app
from aipower.storage import db
from aipower.storage import keys as key_store
from tests.conftest import BACKENDS, Gateway, create_key, make_settings
from tests.databases import fresh_database
from tests.fakes.upstream import FakeUpstream
from tests.servers import serve

CHAT = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "Hello"}]}


def revoke(database_url: str, key_id: str) -> None:
    async def run() -> None:
        engine = db.make_engine(database_url)
        try:
            await key_store.revoke(engine, key_id)
        finally:
            await engine.dispose()

    asyncio.run(run())


def expire(database_url: str, key_id: str) -> None:
    async def run() -> None:
        engine = db.make_engine(database_url)
        try:
            yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
            await key_store.restrict(engine, key_id, key_store.KeyRestriction(expires_at=yesterday))
        finally:
            await engine.dispose()

    asyncio.run(run())


def assert_refused(response: httpx.Response, code: str, secret: str | None = None) -> None:
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("authentication_error", code, None)
    if secret:
        assert secret not in response.text


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("Basic dXNlcjpwYXNz", "malformed_authorization"),
        ("Bearer", "malformed_authorization"),
        ("Bearer sk-proj-thisIsSomeoneElsesOpenAIKey", "malformed_api_key"),
        ("Bearer sk-aipower-thisKeyWasNeverIssued0123456789", "invalid_api_key"),
    ],
    ids=["missing", "empty", "basic", "bearer-without-key", "foreign-key", "unknown-key"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/chat/completions"), ("GET", "/models")])
def test_bad_credentials_are_refused(
    gateway: Gateway, upstream: FakeUpstream, authorization: str | None, code: str, method: str, path: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=gateway.base_url) as http:
        response = http.request(method, path, headers=headers, json=CHAT if method == "POST" else None)

    secret = (authorization or "").partition(" ")[2]
    assert_refused(response, code, secret)
    assert upstream.requests == []


def test_revoked_key_is_refused(gateway: Gateway, upstream: FakeUpstream) -> None:
    secret, key_id = create_key(gateway.database_url, "revoked@example.com")
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert http.post("/chat/completions", json=CHAT).status_code == 200
        revoke(gateway.database_url, key_id)
        upstream.reset()

        response = http.post("/chat/completions", json=CHAT)

    assert_refused(response, "revoked_api_key", secret)
    assert "revoked" in response.json()["error"]["message"]
    assert upstream.requests == []


def test_an_expired_key_is_refused_on_every_endpoint(gateway: Gateway, upstream: FakeUpstream) -> None:
    """Not only new calls: an expired key must not read the balance, the usage or a stored conversation either."""
    secret, key_id = create_key(gateway.database_url, "expired@example.com")
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {secret}"}) as http:
        stored = http.post("/responses", json={"model": "deepseek/deepseek-chat", "input": "my secret diary"})
        assert stored.status_code == 200
        response_id = stored.json()["id"]
        expire(gateway.database_url, key_id)
        upstream.reset()
        attempts = [
            ("POST", "/chat/completions"),
            ("GET", "/models"),
            ("GET", "/balance"),
            ("GET", "/usage"),
            ("GET", f"/responses/{response_id}"),
            ("GET", f"/responses/{response_id}/input_items"),
            ("DELETE", f"/responses/{response_id}"),
        ]
        refusals = {
            path: http.request(method, path, json=CHAT if method == "POST" else None) for method, path in attempts
        }

    for response in refusals.values():
        assert_refused(response, "key_expired", secret)
    assert "expired" in refusals["/models"].json()["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_demo_key_follows_the_configuration_at_every_start(backend: str, tmp_path: Path, upstream_url: str) -> None:
    """AIPOWER_DEMO_KEY set empty turns the demo key off, and changed replaces it: the old one must not go on
    working as an ordinary key on the demo account. Set again, it works again."""
    default, other = "sk-aipower-demo-public", "sk-aipower-another-demo-key"

    def codes(demo_key: str) -> dict[str, int | str]:
        """What GET /v1/models answers each of the two keys, on a gateway started with `demo_key`."""
        answers: dict[str, int | str] = {}
        with serve(create_app(make_settings(url, upstream_url, demo_key=demo_key))) as base:
            for key in (default, other):
                with httpx.Client(base_url=f"{base}/v1", headers={"Authorization": f"Bearer {key}"}) as http:
                    response = http.get("/models")
                answers[key] = 200 if response.status_code == 200 else response.json()["error"]["code"]
        return answers

    with fresh_database(backend, tmp_path) as url:
        assert codes(default) == {default: 200, other: "invalid_api_key"}
        assert codes("") == {default: "revoked_api_key", other: "invalid_api_key"}
        assert codes(other) == {default: "revoked_api_key", other: 200}
        assert codes(default) == {default: 200, other: "revoked_api_key"}


def test_the_demo_key_keeps_nothing_and_reads_no_account_data(gateway: Gateway, upstream_url: str) -> None:
    """Everyone who uses the public demo key shares one account: one demo caller must not read, continue or delete
    what another made, nor see the account's usage. A demo Responses call is answered, and not stored."""
    headers = {"Authorization": "Bearer sk-aipower-demo-public"}
    with (
        serve(create_app(make_settings(gateway.database_url, upstream_url))) as base,  # its own demo quota
        httpx.Client(base_url=f"{base}/v1", headers=headers, timeout=10) as http,
    ):
        made = http.post("/responses", json={"model": "deepseek/deepseek-chat", "input": "my home address is ..."})
        assert made.status_code == 200 and made.json()["store"] is False
        response_id = made.json()["id"]
        refusals = [
            http.get("/balance"),
            http.get("/usage"),
            http.get(f"/generation/{response_id}"),
            http.get(f"/responses/{response_id}"),
            http.get(f"/responses/{response_id}/input_items"),
            http.delete(f"/responses/{response_id}"),
            http.post(
                "/responses",
                json={"model": "deepseek/deepseek-chat", "input": "and?", "previous_response_id": response_id},
            ),
        ]
    for refused in refusals:
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_available_on_demo_key"


def test_the_four_refusals_say_different_things(gateway: Gateway) -> None:
    attempts = [
        {},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer sk-aipower-x"},
    ]
    with httpx.Client(base_url=gateway.base_url) as http:
        messages = {http.get("/models", headers=h).json()["error"]["message"] for h in attempts}

    assert len(messages) == 4


def test_health_needs_no_key(gateway: Gateway) -> None:
    root = gateway.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root) as http:
        response = http.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v2/chat/completions", "/nothing-here"])
def test_unknown_route_is_a_404_envelope(gateway: Gateway, path: str) -> None:
    root = gateway.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {gateway.api_key}"}) as http:
        response = http.post(path, json=CHAT)

    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "unknown_url", None)
    assert path in error["message"]
