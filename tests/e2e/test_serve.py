"""`aipower serve` as a real process: startup banner, keys made by the CLI, the openai Python SDK against it."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import httpx
from openai import OpenAI

from aipower import catalog as catalog_file
from aipower.storage import db
from tests.conftest import provider_env
from tests.e2e.conftest import aipower_serve, clean_environ, run_cli
from tests.fakes.upstream import FakeUpstream

MODEL = "deepseek/deepseek-chat"


def make_key(env: dict[str, str], tmp_path: Path) -> str:
    """A funded user and a key made with the CLI, as an operator would; returns the key printed on stdout."""
    email = f"e2e-{secrets.token_hex(4)}@example.com"
    created = run_cli(["users", "create", email], env, tmp_path)
    assert created.returncode == 0, created.stderr
    assert email in created.stdout
    funded = run_cli(["credits", "add", email, "100"], env, tmp_path)
    assert funded.returncode == 0, funded.stderr
    made = run_cli(["keys", "create", email], env, tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("\n") == 1 and made.stdout.endswith("\n")
    key = made.stdout.strip()
    assert key.startswith("sk-aipower-") and " " not in key
    assert "shown only once" in made.stderr
    assert key not in made.stderr
    return key


def test_serve_announces_and_answers_the_python_sdk(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    _, fake_url = fake_upstream_server
    env = clean_environ({"AIPOWER_DATABASE_URL": database_url, **provider_env(fake_url, skip=frozenset({"minimax"}))})
    with aipower_serve(env, tmp_path) as served:
        banner = served.output()
        assert f"listening on {served.url}/v1" in banner
        assert f"database: {db.describe(database_url)}" in banner
        keyed = next(line for line in banner.splitlines() if line.startswith("providers with keys: "))
        expected = set(catalog_file.load().providers) - {"minimax"}
        assert set(keyed.removeprefix("providers with keys: ").split(", ")) == expected
        to_enable = [line.strip() for line in banner.splitlines() if line.endswith(" to enable")]
        assert to_enable == ["minimax: set MINIMAX_API_KEY to enable"]
        assert "sk-fake" not in banner and fake_url not in banner  # no provider key or URL is echoed
        assert "aipower keys create" in banner

        key = make_key(env, tmp_path)
        with OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=20) as client:
            reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
            assert reply.model == MODEL
            assert reply.choices[0].message.content == "Hello from the fake upstream."
            assert reply.usage is not None and reply.usage.total_tokens == 19

            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            with stream:
                chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "Hello"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

            ids = [m.id for m in client.models.list()]
            assert MODEL in ids and "minimax/minimax-text-01" in ids and "auto" in ids

    assert [r.path for r in upstream.requests] == ["/deepseek/chat/completions"] * 2
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-fake-deepseek-secret"


def test_serve_creates_and_migrates_the_default_sqlite_database(tmp_path: Path) -> None:
    env = clean_environ({})
    assert "AIPOWER_DATABASE_URL" not in env
    assert not (tmp_path / "aipower-data").exists()
    with aipower_serve(env, tmp_path) as served:
        banner = served.output()
        assert "database: sqlite:///./aipower-data/aipower.db" in banner
        assert "providers with keys: none" in banner
        assert "DEEPSEEK_API_KEY" in banner and "MINIMAX_API_KEY" in banner
        database = tmp_path / "aipower-data" / "aipower.db"
        assert database.is_file()
        with httpx.Client() as client:
            assert client.get(f"{served.url}/health").json() == {"status": "ok", "database": "ok"}
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    assert {"users", "api_keys", "request_log", "alembic_version"} <= tables
    assert len(versions) == 1


def test_serve_with_two_workers(
    database_url: str,
    fake_upstream_server: tuple[FakeUpstream, str],
    upstream: FakeUpstream,
    tmp_path: Path,
    shared_limits: dict[str, str],
) -> None:
    _, fake_url = fake_upstream_server
    providers = provider_env(fake_url, skip=frozenset({"minimax"}))
    env = clean_environ({"AIPOWER_DATABASE_URL": database_url, **providers, **shared_limits})
    with aipower_serve(env, tmp_path, "--workers", "2") as served:
        assert "(2 worker(s), HTTP/1.1)" in served.output()
        key = make_key(env, tmp_path)
        with OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0, timeout=20) as client:
            for _ in range(4):
                reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
                assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert len(upstream.requests) == 4
