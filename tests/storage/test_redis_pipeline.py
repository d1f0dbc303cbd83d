"""Script calls made together share one pipeline: each caller still gets its own reply, in order; a Redis that
lost its scripts is re-taught them; a caller that goes away mid-admission does not keep its concurrency slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from aipower.gateway.limits import Check, Slot
from aipower.storage import redis_limits
from aipower.storage.redis_pipeline import ScriptPipeline
from tests.redis_service import require_redis

# Appends ARGV[1] to a list and returns the list's length: the order Redis ran the calls in, and each call's own reply.
_PUSH = "redis.call('RPUSH', KEYS[1], ARGV[1]); return {ARGV[1], redis.call('LLEN', KEYS[1])}"


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    made = redis_limits.connect(require_redis())
    try:
        yield made
    finally:
        await made.aclose()


async def test_concurrent_calls_each_get_their_own_reply_in_order(prefix: str, client: redis.asyncio.Redis) -> None:
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    replies = await asyncio.gather(*(pipeline.call(push, [f"{prefix}order"], [f"c{i}"]) for i in range(100)))
    assert [r[0].decode() for r in replies] == [f"c{i}" for i in range(100)]
    assert sorted(int(r[1]) for r in replies) == list(range(1, 101))
    ran = [v.decode() for v in await client.lrange(f"{prefix}order", 0, -1)]
    # Queued calls run in the order they were queued; the first went alone at once and may be overtaken by them.
    assert sorted(ran) == sorted(f"c{i}" for i in range(100))
    assert [v for v in ran if v != "c0"] == [f"c{i}" for i in range(1, 100)]


async def test_calls_made_together_share_round_trips(
    prefix: str, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 concurrent calls go out as a few pipelines, not as 100 separate exchanges."""
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    await pipeline.call(push, [f"{prefix}warm"], ["x"])  # the script is loaded now
    exchanges: list[str] = []
    for name in ("pipeline", "evalsha"):
        original = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _o=original, _n=name, **k: exchanges.append(_n) or _o(*a, **k))
    await asyncio.gather(*(pipeline.call(push, [f"{prefix}n"], [i]) for i in range(100)))
    assert await client.llen(f"{prefix}n") == 100
    assert exchanges[0] == "evalsha"  # the first call found nothing in flight and went alone
    assert 2 <= len(exchanges) <= 5, exchanges


async def test_a_redis_that_lost_its_scripts_is_taught_them_again(prefix: str, client: redis.asyncio.Redis) -> None:
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    await pipeline.call(push, [f"{prefix}s"], ["first"])
    await client.script_flush()  # what a Redis restart does
    assert (await pipeline.call(push, [f"{prefix}s"], ["alone"]))[1] == 2
    await client.script_flush()
    together = await asyncio.gather(*(pipeline.call(push, [f"{prefix}s"], [i]) for i in range(10)))
    assert sorted(int(r[1]) for r in together) == list(range(3, 13))


async def test_a_caller_gone_mid_admission_gives_its_slot_back(prefix: str, client: redis.asyncio.Redis) -> None:
    limiter = redis_limits.RedisLimiter(client, prefix)
    slot = Slot("conc:key_gone", 1)
    lone = asyncio.create_task(limiter.hit("rpm:k:other", 100, 60))  # in flight alone: the next call queues
    await asyncio.sleep(0)
    leaving = asyncio.create_task(limiter.admit([Check("rpm:k:key_gone", 100, 60)], slot))
    await asyncio.sleep(0)  # queued; the pipeline's writer is created
    await asyncio.sleep(0)  # the writer has sent it
    leaving.cancel()
    await lone
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await limiter.close()  # the admission's reply arrived: its slot is handed back ...
    await limiter.close()  # ... by one more call, sent now
    assert int(await client.get(f"{prefix}slot:conc:key_gone") or 0) == 0
    assert (await limiter.admit([], slot)).admitted
