"""Two gateway processes sharing Redis enforce one limit; --workers N without Redis is refused."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import httpx

from tests.conftest import create_key, provider_env
from tests.e2e.conftest import aipower_serve, clean_environ, run_cli
from tests.fakes.upstream import FakeUpstream

LIMIT = 7
BODY = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_two_processes_admit_exactly_one_limit(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], tmp_path: Path, shared_limits: dict[str, str]
) -> None:
    fake, fake_url = fake_upstream_server
    fake.reset()
    key, _ = create_key(database_url, f"replicas-{secrets.token_hex(4)}@example.com")
    settings = {"AIPOWER_DATABASE_URL": database_url, "AIPOWER_DEFAULT_RPM": str(LIMIT), **shared_limits}
    env = clean_environ({**settings, **provider_env(fake_url)})
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(aipower_serve(env, tmp_path))
        second = stack.enter_context(aipower_serve(env, tmp_path))
        urls = [f"{first.url}/v1/chat/completions", f"{second.url}/v1/chat/completions"]
        statuses = asyncio.run(_fire(urls, key, 6 * LIMIT))
    assert statuses.count(200) == LIMIT, statuses
    assert statuses.count(429) == 5 * LIMIT
    assert len(fake.requests) == LIMIT


async def _fire(urls: list[str], key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
        responses = await asyncio.gather(*(client.post(urls[i % 2], json=BODY) for i in range(count)))
    return [r.status_code for r in responses]


def test_several_workers_need_redis(tmp_path: Path) -> None:
    env = clean_environ({"AIPOWER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    result = run_cli(["serve", "--workers", "2", "--port", "1"], env)
    assert result.returncode != 0
    assert "AIPOWER_REDIS_URL" in result.stderr
