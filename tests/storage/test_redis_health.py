"""The Redis HealthStore against real Redis: it agrees step by step with the in-memory store, shares breakers
between clients (one probe, no lost updates), expires stale state, and falls back to this process during an outage.
With a mirror (`sync_seconds` > 0) a call costs no Redis command, yet samples arrive at the next refresh, failures
at once, another replica sees a breaker at most `sync_seconds` late and the probe is still claimed by one replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from aipower.gateway.health import BreakerRules, MemoryHealthStore
from aipower.gateway.protocols import CallOutcome
from aipower.storage import redis_limits
from aipower.storage.redis_health import MAX_PENDING, FallbackHealthStore, RedisHealthStore
from tests.redis_service import PrivateRedis, require_redis
from tests.servers import free_port

DEP, OTHER = "deepseek/deepseek-chat@deepseek", "zhipu/glm-4-flash@zhipu"
RULES = BreakerRules(failures=3, cooldown=30.0, alpha=0.5)
SYNC = [0.0, 1.0]  # every call to Redis; a mirror refreshed every second


@dataclass
class Clock:
    now: float = 1_700_000_000.25

    def __call__(self) -> float:
        return self.now


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


@pytest.mark.parametrize("sync_seconds", SYNC)
async def test_it_agrees_with_the_memory_store_step_by_step(
    prefix: str, clients: list[redis.asyncio.Redis], sync_seconds: float
) -> None:
    clock = Clock()
    memory = MemoryHealthStore(RULES, clock)
    shared = RedisHealthStore(clients[0], prefix, RULES, clock, sync_seconds=sync_seconds)

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
    direct = RedisHealthStore(clients[1], prefix, RULES, clock, sync_seconds=0)
    assert await direct.read([DEP, OTHER]) == await memory.read([DEP, OTHER])  # the last failure sent everything


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


@pytest.mark.parametrize("sync_seconds", SYNC)
async def test_concurrent_records_lose_no_update(
    prefix: str, clients: list[redis.asyncio.Redis], sync_seconds: float
) -> None:
    rules = BreakerRules(failures=1_000)
    stores = [RedisHealthStore(c, prefix, rules, Clock(), sync_seconds=sync_seconds) for c in clients]
    await asyncio.gather(*(stores[i % 2].record(fail()) for i in range(100)))
    health = (await stores[0].read([DEP]))[DEP]
    assert (health.calls, health.failures, health.consecutive_failures) == (100, 100, 100)


@pytest.mark.parametrize("sync_seconds", SYNC)
async def test_redis_time_rules_without_a_clock_and_state_expires(
    prefix: str, clients: list[redis.asyncio.Redis], sync_seconds: float
) -> None:
    store = RedisHealthStore(clients[0], prefix, RULES, sync_seconds=sync_seconds)
    for _ in range(3):
        await store.record(fail())
    health = (await store.read([DEP]))[DEP]
    assert health.state == "open" and health.retry_in is not None and 25 < health.retry_in <= 30
    ttl = await clients[1].ttl(f"{prefix}health:{DEP}")
    assert 86_000 < ttl <= 86_400  # a day without attempts forgets the deployment
    long = RedisHealthStore(clients[0], prefix, BreakerRules(cooldown=50_000.0))
    await long.record(fail())
    assert await clients[1].ttl(f"{prefix}health:{DEP}") > 190_000  # never before a cool-down could end


@pytest.mark.parametrize("sync_seconds", SYNC)
async def test_an_outage_falls_back_to_this_process_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sync_seconds: float
) -> None:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    client = redis_limits.connect(server.url)
    clock = Clock()
    shared = RedisHealthStore(client, "t:", RULES, sync_seconds=sync_seconds)
    store = FallbackHealthStore(shared, MemoryHealthStore(RULES), clock=clock)
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


@dataclass
class Traffic:
    """What a client sent Redis: the command names, and how many round trips (one per pipeline)."""

    commands: list[str] = field(default_factory=list)
    round_trips: int = 0

    def reset(self) -> None:
        self.commands.clear()
        self.round_trips = 0


_HANDSHAKE = {"HELLO", "CLIENT", "SELECT", "PING"}


@pytest.fixture
async def counted() -> AsyncIterator[tuple[redis.asyncio.Redis, Traffic]]:
    """A client whose commands are counted (a connection's handshake is not)."""
    traffic = Traffic()

    class Counting(redis.asyncio.Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            if name.split()[0].upper() not in _HANDSHAKE:
                traffic.commands.append(name.upper())
            return super().pack_command(*args)

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            traffic.round_trips += 1
            await super().send_packed_command(command, check_health)

    client = redis.asyncio.Redis.from_url(require_redis(), connection_class=Counting)
    await client.ping()
    traffic.reset()
    try:
        yield client, traffic
    finally:
        await client.aclose()


async def test_the_mirror_costs_no_command_per_call_and_sends_samples_at_the_refresh(
    prefix: str, clients: list[redis.asyncio.Redis], counted: tuple[redis.asyncio.Redis, Traffic]
) -> None:
    client, traffic = counted
    clock = Clock()
    mirrored = RedisHealthStore(client, prefix, RULES, clock, sync_seconds=1.0)
    direct = RedisHealthStore(clients[0], prefix, RULES, clock)
    memory = MemoryHealthStore(RULES, clock)
    await asyncio.gather(*(mirrored.read([DEP, OTHER]) for _ in range(10)))  # the first read waits for data
    assert (traffic.round_trips, traffic.commands) == (1, ["TIME", "HGETALL", "HGETALL"])
    traffic.reset()
    for i in range(100):
        outcome = CallOutcome(DEP, ok=True, ttft=0.1 + i / 1000, tokens_per_s=50.0 + i)
        for store in (mirrored, memory):
            await store.read([DEP, OTHER])
            assert await store.admit(DEP)
            await store.record(outcome)
            await store.record_speed(DEP, 40.0 + i)
        clock.now += 0.005
    assert (traffic.round_trips, traffic.commands) == (0, [])  # a request costs no Redis command
    assert await mirrored.read([DEP, OTHER]) == await memory.read([DEP, OTHER])  # its own samples, at once
    assert (await direct.read([DEP]))[DEP].calls == 0  # not sent yet
    clock.now += 0.5  # a second since the refresh: the next call refreshes, sending the 200 samples first
    assert await mirrored.read([DEP, OTHER]) == await memory.read([DEP, OTHER])
    assert traffic.round_trips == 1 and traffic.commands == ["EVALSHA", "TIME", "HGETALL"]  # DEP's comes back
    assert await direct.read([DEP, OTHER]) == await memory.read([DEP, OTHER])  # the same averages, bit for bit


async def test_a_stale_mirror_is_refreshed_by_one_caller_while_the_others_use_it(
    prefix: str, counted: tuple[redis.asyncio.Redis, Traffic]
) -> None:
    client, traffic = counted
    clock = Clock()
    store = RedisHealthStore(client, prefix, RULES, clock, sync_seconds=1.0)
    await store.read([DEP])
    clock.now += 1.0
    traffic.reset()
    answers = await asyncio.gather(*(store.read([DEP]) for _ in range(20)))
    assert traffic.round_trips == 1 and traffic.commands == ["TIME", "HGETALL"]
    assert all(answer[DEP].state == "closed" for answer in answers)
    traffic.reset()
    await store.read([DEP, OTHER])  # a deployment the mirror does not hold yet: fetched (and waited for)
    assert traffic.commands == ["TIME", "HGETALL", "HGETALL"]


async def test_queued_samples_are_sent_once_enough_wait(prefix: str, clients: list[redis.asyncio.Redis]) -> None:
    clock = Clock()
    store = RedisHealthStore(clients[0], prefix, RULES, clock, sync_seconds=1.0)
    await store.read([DEP])
    for _ in range(MAX_PENDING + 10):
        await store.record(CallOutcome(DEP, ok=True))
    assert (await RedisHealthStore(clients[1], prefix, RULES, clock).read([DEP]))[DEP].calls == MAX_PENDING


async def test_a_failure_opens_the_breaker_in_redis_at_once_and_for_the_other_replica_within_a_sync(
    prefix: str, clients: list[redis.asyncio.Redis]
) -> None:
    clock = Clock()
    first, second = (RedisHealthStore(c, prefix, RULES, clock, sync_seconds=1.0) for c in clients)
    await first.read([DEP])
    await second.read([DEP])
    await first.record(CallOutcome(DEP, ok=True, ttft=0.2))  # queued; the failures after it are sent at once
    for _ in range(RULES.failures):
        await first.record(fail())
    stored = await clients[1].hgetall(f"{prefix}health:{DEP}")
    assert (stored[b"calls"], stored[b"consecutive_failures"], float(stored[b"opened_at"])) == (b"4", b"3", clock.now)
    assert (await first.read([DEP]))[DEP].state == "open" and not await first.admit(DEP)
    clock.now += 0.9
    assert (await second.read([DEP]))[DEP].state == "closed"  # its mirror is 0.9 s old
    clock.now += 0.1
    assert (await second.read([DEP]))[DEP].state == "open" and not await second.admit(DEP)  # refreshed


async def test_two_mirrors_still_let_exactly_one_probe_through(prefix: str, clients: list[redis.asyncio.Redis]) -> None:
    clock = Clock()
    first, second = (RedisHealthStore(c, prefix, RULES, clock, sync_seconds=1.0) for c in clients)
    await asyncio.gather(first.read([DEP]), second.read([DEP]))
    await asyncio.gather(*(s.record(fail()) for s in (first, second, first)))
    clock.now += RULES.cooldown
    states = await asyncio.gather(first.read([DEP]), second.read([DEP]))
    assert [s[DEP].state for s in states] == ["half-open", "half-open"]
    probes = await asyncio.gather(*((first, second)[i % 2].admit(DEP) for i in range(40)))
    assert sum(probes) == 1  # exactly one probe, whichever replica asked
    winner, loser = (first, second) if any(probes[0::2]) else (second, first)
    await winner.record(CallOutcome(DEP, ok=True))  # on a breaker that is not closed: sent at once
    assert (await winner.read([DEP]))[DEP].state == "closed"
    assert (await loser.read([DEP]))[DEP].state == "half-open"  # its mirror is not due yet
    assert await loser.admit(DEP)  # Redis says closed: the call goes, and the mirror learns it
    assert (await loser.read([DEP]))[DEP].state == "closed"


async def test_a_failed_probe_reopens_the_breaker_for_the_other_mirror_at_its_next_admit(
    prefix: str, clients: list[redis.asyncio.Redis]
) -> None:
    clock = Clock()
    first, second = (RedisHealthStore(c, prefix, RULES, clock, sync_seconds=1.0) for c in clients)
    await asyncio.gather(first.read([DEP]), second.read([DEP]))
    for _ in range(RULES.failures):
        await first.record(fail())
    clock.now += RULES.cooldown
    await asyncio.gather(first.read([DEP]), second.read([DEP]))
    assert await first.admit(DEP)  # the probe
    await first.record(fail())  # fails: open for another cool-down
    clock.now += 0.5
    assert (await second.read([DEP]))[DEP].state == "half-open"  # not refreshed yet
    assert not await second.admit(DEP)  # Redis refuses, and says why
    assert (await second.read([DEP]))[DEP].state == "open"


async def test_queued_samples_reach_redis_within_a_sync_without_further_calls(
    prefix: str, clients: list[redis.asyncio.Redis]
) -> None:
    store = RedisHealthStore(clients[0], prefix, RULES, sync_seconds=0.1)
    await store.read([DEP])
    await store.record(CallOutcome(DEP, ok=True, ttft=0.25))
    await store.record_speed(DEP, 30.0)
    direct = RedisHealthStore(clients[1], prefix, RULES)
    assert (await direct.read([DEP]))[DEP].calls == 0
    for _ in range(20):  # due after 0.1 s; up to a second on a busy machine
        await asyncio.sleep(0.05)
        if (sent := (await direct.read([DEP]))[DEP]).calls:
            break
    assert (sent.calls, sent.ttft_ms, sent.tokens_per_s) == (1, 250.0, 30.0)


async def test_an_outage_at_a_refresh_engages_the_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    client = redis_limits.connect(server.url)
    clock = Clock()
    shared = RedisHealthStore(client, "t:", RULES, clock, sync_seconds=1.0)
    store = FallbackHealthStore(shared, MemoryHealthStore(RULES, clock), clock=clock)
    try:
        await store.read([DEP, OTHER])
        await store.record(CallOutcome(DEP, ok=True))  # queued, then lost with the outage
        server.stop()
        assert (await store.read([DEP]))[DEP].calls == 1  # the mirror is fresh: Redis is not asked
        clock.now += 1.0
        with caplog.at_level(logging.WARNING):
            answers = await asyncio.gather(*(store.read([DEP]) for _ in range(5)))
            assert answers[0][DEP].calls == 0  # the refresh failed: this process's own breakers answered
            for _ in range(3):
                await store.record(fail(OTHER))
            assert (await store.read([OTHER]))[OTHER].state == "open" and not await store.admit(OTHER)
            clock.now += 1.0  # Redis is tried again: every call goes to it until a refresh succeeds
            await store.record(CallOutcome(DEP, ok=True))
            assert (await store.read([OTHER]))[OTHER].state == "open"
            server.start()
            clock.now += 1.0
            back = await store.read([DEP, OTHER])
        messages = [r.message for r in caplog.records]
        assert len([m for m in messages if "Redis unreachable" in m]) == 1  # logged once
        assert len([m for m in messages if "Redis is back" in m]) == 1  # and only when it was
        assert (back[DEP].calls, back[OTHER].calls) == (0, 0)  # a fresh server: the shared state starts over
    finally:
        await client.aclose()
        server.stop()
