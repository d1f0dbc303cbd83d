"""The Redis HealthStore against real Redis: it agrees step by step with the in-memory store, shares breakers
between clients (one probe, no lost updates), expires stale state, and falls back to this process during an outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from aipower.gateway.health import BreakerRules, MemoryHealthStore
from aipower.gateway.protocols import CallOutcome
from aipower.storage import redis_limits
from aipower.storage.redis_health import FallbackHealthStore, RedisHealthStore
from tests.redis_service import PrivateRedis, new_prefix, prefix_cleanup, require_redis
from tests.servers import free_port

DEP, OTHER = "deepseek/deepseek-chat@deepseek", "zhipu/glm-4-flash@zhipu"
RULES = BreakerRules(failures=3, cooldown=30.0, alpha=0.5)


@dataclass
class Clock:
    now: float = 1_700_000_000.25

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    with prefix_cleanup(new_prefix()) as value:
        yield value


@pytest.fixture
async def clients() -> AsyncIterator[list[redis.asyncio.Redis]]:
    url = require_redis()
    made = [redis_limits.connect(url) for _ in range(2)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


def fail(deployment: str = DEP) -> CallOutcome:
    return CallOutcome(deployment, ok=False)


async def test_it_agrees_with_the_memory_store_step_by_step(prefix: str, clients: list[redis.asyncio.Redis]) -> None:
    clock = Clock()
    memory = MemoryHealthStore(RULES, clock)
    shared = RedisHealthStore(clients[0], prefix, RULES, clock)

    async def same() -> None:
        assert await shared.read([DEP, OTHER]) == await memory.read([DEP, OTHER])

    async def both_admit() -> bool:
        allowed = await shared.admit(DEP)
        assert allowed == await memory.admit(DEP)
        return allowed

    steps: list[CallOutcome | float | str] = [
        CallOutcome(DEP, ok=True, ttft=0.31, tokens_per_s=87.5),
        fail(), fail(), "admit", fail(), "admit", 29.9, "admit", 0.1, "admit", "admit",  # open, then one probe
        fail(), 30.0, "admit", CallOutcome(DEP, ok=True, ttft=0.45),  # a failed probe; the next one closes it
        fail(OTHER), CallOutcome(OTHER, ok=False, ttft=None), "speed", fail(),
    ]  # fmt: skip
    opened = []
    for step in steps:
        if isinstance(step, CallOutcome):
            await shared.record(step)
            await memory.record(step)
        elif isinstance(step, float):
            clock.now += step
        elif step == "speed":
            await shared.record_speed(DEP, 12.5)
            await memory.record_speed(DEP, 12.5)
        else:
            opened.append(await both_admit())
        await same()
    assert opened == [True, False, False, True, False, True]
    health = (await shared.read([DEP]))[DEP]
    assert (health.calls, health.failures, health.consecutive_failures) == (7, 5, 1)
    assert health.tokens_per_s == pytest.approx((87.5 + 12.5) / 2)


async def test_two_clients_share_one_breaker_and_one_probe(prefix: str, clients: list[redis.asyncio.Redis]) -> None:
    clock = Clock()
    first, second = (RedisHealthStore(c, prefix, RULES, clock) for c in clients)
    await asyncio.gather(*(s.record(fail()) for s in (first, second, first)))
    assert (await second.read([DEP]))[DEP].state == "open"
    assert not await second.admit(DEP)
    clock.now += RULES.cooldown
    probes = await asyncio.gather(*((first, second)[i % 2].admit(DEP) for i in range(40)))
    assert sum(probes) == 1  # exactly one probe, whichever replica asked
    await first.record(CallOutcome(DEP, ok=True))
    assert (await second.read([DEP]))[DEP].state == "closed" and await second.admit(DEP)


async def test_concurrent_records_lose_no_update(prefix: str, clients: list[redis.asyncio.Redis]) -> None:
    stores = [RedisHealthStore(c, prefix, BreakerRules(failures=1_000), Clock()) for c in clients]
    await asyncio.gather(*(stores[i % 2].record(fail()) for i in range(100)))
    health = (await stores[0].read([DEP]))[DEP]
    assert (health.calls, health.failures, health.consecutive_failures) == (100, 100, 100)


async def test_redis_time_rules_without_a_clock_and_state_expires(
    prefix: str, clients: list[redis.asyncio.Redis]
) -> None:
    store = RedisHealthStore(clients[0], prefix, RULES)
    for _ in range(3):
        await store.record(fail())
    health = (await store.read([DEP]))[DEP]
    assert health.state == "open" and health.retry_in is not None and 25 < health.retry_in <= 30
    ttl = await clients[1].ttl(f"{prefix}health:{DEP}")
    assert 86_000 < ttl <= 86_400  # a day without attempts forgets the deployment
    long = RedisHealthStore(clients[0], prefix, BreakerRules(cooldown=50_000.0))
    await long.record(fail())
    assert await clients[1].ttl(f"{prefix}health:{DEP}") > 190_000  # never before a cool-down could end


async def test_an_outage_falls_back_to_this_process_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    client = redis_limits.connect(server.url)
    clock = Clock()
    store = FallbackHealthStore(RedisHealthStore(client, "t:", RULES), MemoryHealthStore(RULES), clock=clock)
    try:
        await store.record(fail())
        server.stop()
        with caplog.at_level(logging.WARNING, logger="aipower.storage.redis_health"):
            for _ in range(3):
                await store.record(fail(OTHER))  # this process's breaker for OTHER opens
            assert (await store.read([OTHER]))[OTHER].state == "open" and not await store.admit(OTHER)
        assert len([r for r in caplog.records if "Redis unreachable" in r.message]) == 1  # logged once
        server.start()
        assert (await store.read([OTHER]))[OTHER].state == "open"  # Redis is retried at most once a second
        clock.now += 1.0
        back = await store.read([DEP, OTHER])
        assert (back[DEP].calls, back[OTHER].calls) == (0, 0)  # a fresh server: the shared state starts over
    finally:
        await client.aclose()
        server.stop()
