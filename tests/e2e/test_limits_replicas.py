"""Two gateway processes sharing Redis enforce one limit; --workers N without Redis is refused."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path

import httpx
import redis

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


def _one_minute_ahead() -> None:
    """Wait out the last seconds of a minute: the calls must all fall in one rate-limit window."""
    left = 60 - time.time() % 60
    if left < 10:
        time.sleep(left + 0.2)


async def _fire(urls: list[str], key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
        responses = await asyncio.gather(*(client.post(urls[i % 2], json=BODY) for i in range(count)))
    return [r.status_code for r in responses]


def test_two_processes_admitting_from_leases_never_pass_the_limit(
    database_url: str, fake_upstream_server: tuple[FakeUpstream, str], tmp_path: Path, shared_limits: dict[str, str]
) -> None:
    """With leases (the default), each process admits most calls without asking Redis; together they still admit
    no more than the limit, and no fewer than it less what one lease can hold; stopped, they give back what they
    did not use, so Redis counts exactly the calls served."""
    fake, fake_url = fake_upstream_server
    fake.reset()
    limit = 80
    key, _ = create_key(database_url, f"leases-{secrets.token_hex(4)}@example.com")
    settings = {
        "AIPOWER_DATABASE_URL": database_url,
        "AIPOWER_DEFAULT_RPM": str(limit),
        "AIPOWER_MAX_CONCURRENT_PER_KEY": "1000",  # only the requests per minute bind
        **shared_limits,
    }
    env = clean_environ({**settings, **provider_env(fake_url)})
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(aipower_serve(env, tmp_path))
        second = stack.enter_context(aipower_serve(env, tmp_path))
        urls = [f"{first.url}/v1/chat/completions", f"{second.url}/v1/chat/completions"]
        _one_minute_ahead()
        statuses = asyncio.run(_fire(urls, key, 3 * limit))
    served = statuses.count(200)
    assert limit - limit // 8 <= served <= limit, statuses
    assert statuses.count(429) == 3 * limit - served
    assert len(fake.requests) == served
    with redis.Redis.from_url(shared_limits["AIPOWER_REDIS_URL"]) as client:
        counters = [k for k in client.scan_iter(match=f"{shared_limits['AIPOWER_REDIS_PREFIX']}rl:rpm:k:*")]
        assert [int(client.get(k) or 0) for k in counters] == [served]


def test_several_workers_need_redis(tmp_path: Path) -> None:
    env = clean_environ({"AIPOWER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    result = run_cli(["serve", "--workers", "2", "--port", "1"], env)
    assert result.returncode != 0
    assert "AIPOWER_REDIS_URL" in result.stderr
