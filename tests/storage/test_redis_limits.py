"""The Redis limiter against real Redis: exact under concurrency from two clients, and the outage policy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
import redis.exceptions

from aipower.errors import UpstreamUnavailable
from aipower.gateway.limits import Check, Slot
from aipower.storage import redis_limits
from aipower.storage.redis_outage import OutageWords, RedisOutage
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
        held = [b.slot_token for b in slots if b.admitted]
        assert len(set(held)) == 5 and all(held)
        await limiters[0].finish("conc:key_x", [], held[0])
        await limiters[1].finish("conc:key_x", [], held[0])  # released twice: still one place back, not two
        await limiters[0].finish("conc:key_x", [], "never-admitted")  # a token that holds nothing frees nothing
        assert (await limiters[1].admit([], Slot("conc:key_x", 5))).admitted
        assert not (await limiters[0].admit([], Slot("conc:key_x", 5))).admitted
        await limiters[0].finish("conc:key_x", [], held[1])
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
        extra = await limiters[0].admit([], Slot("conc:key_y", 12))
        assert extra.admitted and extra.windows == ()
        full = await limiters[0].admit([Check("rpm:k:key_y", 20, 60)], Slot("conc:key_y", 11))
        assert not full.admitted and not full.slot_free  # 10 + 1 slots held: the rpm window does not count
        assert (await limiters[1].hit("rpm:k:key_y", 10**9, 60, cost=0)).used == 10
        usage = [Check("tpm:k:key_y", 0, 60, 45), Check("tpm:u:7", 0, 60, 5)]
        await limiters[1].finish("conc:key_y", usage, extra.slot_token)
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
        admitted = await limiter.admit([Check("rpm:k:b", 1, 60)], Slot("conc:b", 1))
        assert admitted.admitted
        await limiter.finish("conc:b", [Check("tpm:k:b", 0, 60, 10)], admitted.slot_token)
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


async def test_a_slot_whose_release_is_lost_frees_itself_at_its_deadline_however_busy_the_key(prefix: str) -> None:
    """A call whose finish never comes (its process died, say) holds its place only until its own deadline: the
    other calls on the key, coming and going meanwhile, do not keep it alive."""
    url = require_redis()
    client = redis_limits.connect(url)
    now = [time.time()]
    limiter = redis_limits.RedisLimiter(client, prefix, clock=lambda: now[0])
    try:
        assert (await limiter.admit([], Slot("conc:busy", 2))).admitted  # never finished
        for _ in range(5):  # steady traffic through the other place
            now[0] += 200
            batch = await limiter.admit([], Slot("conc:busy", 2))
            assert batch.admitted
            assert not (await limiter.admit([], Slot("conc:busy", 1))).slot_free  # the lost one still counts...
            await limiter.finish("conc:busy", [], batch.slot_token)
        # ...until its deadline (15 minutes after it was admitted) has passed
        assert (await limiter.admit([], Slot("conc:busy", 1))).admitted
    finally:
        await client.aclose()


class SlowReplies:
    """A TCP proxy to Redis that can hold Redis's replies back: Redis runs each command, the client times out."""

    def __init__(self, target_port: int) -> None:
        self.delay = 0.0
        self._target = target_port
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, replies: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    if replies and self.delay:
                        await asyncio.sleep(self.delay)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))


async def test_an_admission_whose_answer_is_lost_gives_its_slot_back(prefix: str) -> None:
    """Redis takes the slot, but its answer comes after the client's timeout: the caller is refused (503 with
    limits "closed"), so nobody will finish that call. The slot must come back, not block the key."""
    url = require_redis()
    proxy = SlowReplies(int(url.rsplit(":", 1)[1].split("/")[0]))
    via = redis_limits.connect(await proxy.start())
    limiter = redis_limits.RedisLimiter(via, prefix)
    try:
        await limiter.hit("warm", 100, 60)  # the scripts are loaded, the connection is open
        proxy.delay = 0.7  # past the 0.5 s socket timeout
        with pytest.raises(redis.exceptions.TimeoutError):
            await limiter.admit([], Slot("conc:lost", 1))
        proxy.delay = 0.0
        await asyncio.sleep(1.0)  # the late answer drains; the release queued at the timeout goes through
        await limiter.close()
        direct = redis_limits.connect(url)
        try:
            assert (await redis_limits.RedisLimiter(direct, prefix).admit([], Slot("conc:lost", 1))).admitted
        finally:
            await direct.aclose()
    finally:
        await via.aclose()
        await proxy.close()


async def test_a_slot_goes_back_where_it_was_taken_across_an_outage(tmp_path: Path) -> None:
    """Limits "open": during an outage slots are taken in this process. A call admitted on Redis that ends during
    the outage must not free a place taken in-process (the cap would be passed), and one admitted in-process that
    ends after Redis came back must free its in-process place (or the next outage would start with it taken)."""
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    client = redis_limits.connect(server.url)
    clock = [0.0]
    limiter = redis_limits.FallbackLimiter(redis_limits.RedisLimiter(client, "t:"), "open", clock=lambda: clock[0])
    slot = Slot("conc:k", 1)
    try:
        on_redis = await limiter.admit([], Slot("conc:k", 5))
        assert on_redis.admitted and on_redis.slot_token
        server.stop()
        in_process = await limiter.admit([], slot)
        assert in_process.admitted and not in_process.slot_token
        await limiter.finish("conc:k", [], on_redis.slot_token)  # Redis is down: nothing to free in this process
        assert not (await limiter.admit([], slot)).admitted  # the in-process place is still taken
        server.start()
        clock[0] += 2  # past the back-off: Redis again
        await limiter.finish("conc:k", [], in_process.slot_token)
        server.stop()
        clock[0] += 2
        assert (await limiter.admit([], slot)).admitted  # the next outage starts with its place free
    finally:
        await client.aclose()
        server.stop()


class Store:
    """A stand-in for one side of RedisOutage: the local one answers at once; the Redis one times out."""

    def __init__(self, answer: str, fails_after: float | None = None) -> None:
        self.answer = answer
        self.fails_after = fails_after
        self.tries = 0

    async def read(self) -> str:
        self.tries += 1
        if self.fails_after is not None:
            await asyncio.sleep(self.fails_after)
            raise redis.exceptions.TimeoutError("Redis did not answer")
        return self.answer


async def test_during_an_outage_one_call_at_a_time_tries_redis_again() -> None:
    """Once a second Redis is tried again: by one call, while the others go on with this process's own store
    instead of each waiting out a timeout."""
    clock = [0.0]
    redis_side, local_side = Store("redis", fails_after=0.2), Store("local")
    outage = RedisOutage(redis_side, local_side, OutageWords("test", "locally", "shared"), clock=lambda: clock[0])
    assert await outage.run(lambda store: store.read()) == "local"  # Redis timed out: the outage starts
    clock[0] += 2  # past the back-off
    answers = await asyncio.gather(*(outage.run(lambda store: store.read()) for _ in range(20)))
    assert answers == ["local"] * 20
    assert redis_side.tries == 2  # the first call, then one probe for the twenty


async def test_an_outage_ends_on_a_round_trip_not_on_an_answer_from_a_lease() -> None:
    """A rate limit may be admitted from a lease without asking Redis: such an answer must not end an outage (the
    calls after it would go back to Redis and each wait out its timeout)."""
    clock = [0.0]
    redis_side, local_side = Store("redis", fails_after=0.01), Store("local")
    probe_side = Store("probe", fails_after=0.01)
    outage = RedisOutage(
        redis_side,
        local_side,
        OutageWords("test", "locally", "shared"),
        clock=lambda: clock[0],
        probe=lambda _store: probe_side.read(),
    )
    assert await outage.run(lambda store: store.read()) == "local"  # the outage starts
    redis_side.fails_after = None  # the primary answers now (from a lease), while Redis is still down
    clock[0] += 2
    assert await outage.run(lambda store: store.read()) == "local"  # the probe failed: still down
    assert probe_side.tries == 1 and redis_side.tries == 1
    probe_side.fails_after = None  # Redis is back
    clock[0] += 2
    assert await outage.run(lambda store: store.read()) == "redis"
