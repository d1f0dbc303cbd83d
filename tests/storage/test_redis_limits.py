"""The Redis limiter against real Redis: exact under concurrency from two clients, and the outage policy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aipower.errors import UpstreamUnavailable
from aipower.gateway.limits import Check, Slot
from aipower.storage import redis_limits
from tests.redis_service import PrivateRedis, require_redis
from tests.servers import free_port


async def test_two_clients_admit_exactly_the_limit(prefix: str) -> None:
    url = require_redis()
    clients = [redis_limits.connect(url) for _ in range(2)]
    limiters = [redis_limits.RedisLimiter(c, prefix) for c in clients]
    try:
        windows = await asyncio.gather(*(limiters[i % 2].hit("rpm:k:key_x", 37, 60) for i in range(200)))
        assert sum(w.allowed for w in windows) == 37
        assert max(w.used for w in windows) == 37
        assert all(0 < w.reset_seconds <= 60 for w in windows)
        slots = await asyncio.gather(*(limiters[i % 2].admit([], Slot("conc:key_x", 5)) for i in range(20)))
        assert sum(b.admitted for b in slots) == 5
        await limiters[0].finish("conc:key_x", [])
        assert (await limiters[1].admit([], Slot("conc:key_x", 5))).admitted
        await limiters[0].add("tpm:k:key_x", 60, 500)
        assert (await limiters[1].hit("tpm:k:key_x", 1000, 60, cost=0)).used == 500
    finally:
        for client in clients:
            await client.aclose()


async def test_batch_admits_all_or_nothing_from_two_clients(prefix: str) -> None:
    url = require_redis()
    clients = [redis_limits.connect(url) for _ in range(2)]
    start = time.time() // 60 * 60 + 1  # one fixed minute, whatever the time the test runs
    limiters = [redis_limits.RedisLimiter(c, prefix, clock=lambda: start) for c in clients]
    # tokens bind first (10 x 30 <= 300 < 11 x 30), requests would allow 20, the key's slot 12, the user's 50
    checks = [Check("rpm:k:key_y", 20, 60), Check("rpm:u:7", 50, 60), Check("tpm:k:key_y", 300, 60, cost=30)]
    try:
        batches = await asyncio.gather(*(limiters[i % 2].admit(checks, Slot("conc:key_y", 12)) for i in range(100)))
        admitted = [b for b in batches if b.admitted]
        assert len(admitted) == 10
        assert sorted(b.windows[2].used for b in admitted) == list(range(30, 301, 30))
        refused = [b for b in batches if not b.admitted]
        assert all(b.slot_free and not b.windows[2].allowed and b.windows[0].allowed for b in refused)
        assert all(0 < w.reset_seconds <= 60 for b in batches for w in b.windows)
        # no partial increments: every counter holds exactly what the admitted calls added
        used = [(await limiters[1].hit(c.key, 10**9, 60, cost=0)).used for c in checks]
        assert used == [10, 10, 300]
        assert (await limiters[0].admit([], Slot("conc:key_y", 12))).windows == ()
        full = await limiters[0].admit([Check("rpm:k:key_y", 20, 60)], Slot("conc:key_y", 11))
        assert not full.admitted and not full.slot_free  # 10 + 1 slots held: the rpm window does not count
        assert (await limiters[1].hit("rpm:k:key_y", 10**9, 60, cost=0)).used == 10
        await limiters[1].finish("conc:key_y", [Check("tpm:k:key_y", 0, 60, 45), Check("tpm:u:7", 0, 60, 5)])
        assert (await limiters[0].hit("tpm:k:key_y", 10**9, 60, cost=0)).used == 345
        assert (await limiters[0].hit("tpm:u:7", 10**9, 60, cost=0)).used == 5
        assert (await limiters[0].admit([], Slot("conc:key_y", 12))).admitted  # the slot was given back
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
        assert (await limiter.admit([Check("rpm:k:b", 1, 60)], Slot("conc:b", 1))).admitted
        await limiter.finish("conc:b", [Check("tpm:k:b", 0, 60, 10)])
        server.stop()
        if policy == "open":
            local = [await limiter.hit("rpm:k:a", 2, 60) for _ in range(3)]  # this process's own counters
            assert [w.allowed for w in local] == [True, True, False]
            assert (await limiter.admit([Check("rpm:k:b", 1, 60)], Slot("conc:b", 1))).admitted
            assert not (await limiter.admit([Check("rpm:k:b", 1, 60)])).admitted
            await limiter.finish("conc:b", [])
        else:
            with pytest.raises(UpstreamUnavailable):
                await limiter.hit("rpm:k:a", 2, 60)
            with pytest.raises(UpstreamUnavailable):
                await limiter.admit([Check("rpm:k:b", 1, 60)], Slot("conc:b", 1))
        server.start()
        clock[0] += 2  # past the one-second back-off
        window = await limiter.hit("rpm:k:a", 2, 60)
        assert window.allowed and window.used == 1  # Redis again (a fresh server: its counter starts over)
    finally:
        await client.aclose()
        server.stop()
