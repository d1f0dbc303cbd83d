"""The Redis limiter against real Redis: exact under concurrency from two clients, and the outage policy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipower.errors import UpstreamUnavailable
from aipower.storage import redis_limits
from tests.redis_service import PrivateRedis, new_prefix, prefix_cleanup, require_redis
from tests.servers import free_port


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    with prefix_cleanup(new_prefix()) as value:
        yield value


async def test_two_clients_admit_exactly_the_limit(prefix: str) -> None:
    url = require_redis()
    clients = [redis_limits.connect(url) for _ in range(2)]
    limiters = [redis_limits.RedisLimiter(c, prefix) for c in clients]
    try:
        windows = await asyncio.gather(*(limiters[i % 2].hit("rpm:k:key_x", 37, 60) for i in range(200)))
        assert sum(w.allowed for w in windows) == 37
        assert max(w.used for w in windows) == 37
        assert all(0 < w.reset_seconds <= 60 for w in windows)
        slots = await asyncio.gather(*(limiters[i % 2].acquire("conc:key_x", 5) for i in range(20)))
        assert sum(slots) == 5
        await limiters[0].release("conc:key_x")
        assert await limiters[1].acquire("conc:key_x", 5)
        await limiters[0].add("tpm:k:key_x", 60, 500)
        assert (await limiters[1].hit("tpm:k:key_x", 1000, 60, cost=0)).used == 500
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_outage_policy_and_recovery(tmp_path: Path, policy: str) -> None:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    client = redis_limits.connect(server.url)
    clock = [0.0]
    limiter = redis_limits.FallbackLimiter(redis_limits.RedisLimiter(client, "t:"), policy, clock=lambda: clock[0])
    try:
        assert (await limiter.hit("rpm:k:a", 2, 60)).allowed
        server.stop()
        if policy == "open":
            local = [await limiter.hit("rpm:k:a", 2, 60) for _ in range(3)]  # this process's own counters
            assert [w.allowed for w in local] == [True, True, False]
        else:
            with pytest.raises(UpstreamUnavailable):
                await limiter.hit("rpm:k:a", 2, 60)
        server.start()
        clock[0] += 2  # past the one-second back-off
        window = await limiter.hit("rpm:k:a", 2, 60)
        assert window.allowed and window.used == 1  # Redis again (a fresh server: its counter starts over)
    finally:
        await client.aclose()
        server.stop()
