"""Leased limits on real Redis: replicas together never pass a limit, most calls skip Redis, leases come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis

from aipower.gateway import limit_leases
from aipower.gateway.limit_leases import LeasedLimiter
from aipower.gateway.limits import Check, LocalLimiter, Slot
from aipower.storage import redis_limits
from tests.redis_service import require_redis


class _Clock:
    """The clock of a test's limiters: it starts one second into a minute (a test runs well within one window,
    whenever it runs) and goes at the real pace (leases go back after real seconds idle)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._start = time.time() // 60 * 60 + 1
        self._base = time.monotonic()

    def __call__(self) -> float:
        return self._start + time.monotonic() - self._base


clock = _Clock()


@pytest.fixture(autouse=True)
def _a_window_of_its_own() -> None:
    clock.restart()


@pytest.fixture
async def clients() -> AsyncIterator[list[Redis]]:
    made = [redis_limits.connect(require_redis()) for _ in range(3)]
    yield made
    for client in made:
        await client.aclose()


class Counting(redis_limits.RedisLimiter):
    """The Redis limiter, counting the round trips a replica makes."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis, prefix, clock=clock)
        self.trips = 0

    async def lease(self, *args: object, **kwargs: object) -> limit_leases.Lease:
        self.trips += 1
        return await super().lease(*args, **kwargs)  # type: ignore[arg-type]

    async def finish(self, slot_key: str | None, usage: Sequence[Check], slot_token: str = "") -> None:
        self.trips += 1
        await super().finish(slot_key, usage, slot_token)


def _replicas(clients: list[Redis], prefix: str) -> tuple[list[Counting], list[LeasedLimiter]]:
    sources = [Counting(c, prefix) for c in clients[:2]]
    return sources, [LeasedLimiter(s, clock=clock) for s in sources]


async def _used(client: Redis, prefix: str, key: str) -> int:
    return (await redis_limits.RedisLimiter(client, prefix, clock=clock).hit(key, 10**9, 60, cost=0)).used


async def test_two_replicas_never_pass_a_limit_and_give_back_what_they_did_not_use(
    clients: list[Redis], prefix: str
) -> None:
    _, replicas = _replicas(clients, prefix)
    checks = [Check("rpm:k:key_l", 100, 60), Check("tpm:k:key_l", 10_000, 60, cost=30)]
    batches = await asyncio.gather(*(replicas[i % 2].admit(checks, Slot("conc:key_l", 1000)) for i in range(300)))
    admitted = [b for b in batches if b.admitted]
    assert 90 <= len(admitted) <= 100  # never more than the limit; at most the other's leases fewer
    assert len({b.slot_token for b in admitted}) == len(admitted)  # each call its own hold
    assert await _used(clients[2], prefix, "rpm:k:key_l") >= len(admitted)  # counted in Redis, leases included
    for i, b in enumerate(admitted):
        await replicas[i % 2].finish("conc:key_l", [Check("tpm:k:key_l", 0, 60, 5)], b.slot_token)
    for replica in replicas:
        await replica.close()
    # Given back: Redis holds exactly what the calls used, and no slot hold is left.
    assert await _used(clients[2], prefix, "rpm:k:key_l") == len(admitted)
    assert await _used(clients[2], prefix, "tpm:k:key_l") == 35 * len(admitted)
    assert await clients[2].zcard(f"{prefix}slots:conc:key_l") == 0


async def test_calls_of_one_key_mostly_skip_redis_and_report_their_own_count(clients: list[Redis], prefix: str) -> None:
    sources, replicas = _replicas(clients, prefix)
    checks = [Check("rpm:k:key_m", 1000, 60)]
    seen = []
    for _ in range(100):
        batch = await replicas[0].admit(checks, Slot("conc:key_m", 64))
        assert batch.admitted
        seen.append(batch.windows[0].used)
        await replicas[0].finish("conc:key_m", [], batch.slot_token)
    assert seen == list(range(1, 101))  # the headers count this process's calls one by one
    assert sources[0].trips <= 100 // limit_leases.LEASE_CALLS + 2
    # The other replica sees the leases as used, never fewer than the calls made.
    assert await _used(clients[2], prefix, "rpm:k:key_m") >= 100
    await replicas[0].close()
    assert await _used(clients[2], prefix, "rpm:k:key_m") == 100


async def test_near_the_limit_leases_shrink_to_nothing(clients: list[Redis], prefix: str) -> None:
    sources, replicas = _replicas(clients, prefix)
    checks = [Check("rpm:k:key_n", 7, 60)]
    results = [await replicas[i % 2].admit(checks) for i in range(10)]
    assert [b.admitted for b in results] == [True] * 7 + [False] * 3  # 6 left after the first: 6 // 8 = no lease
    assert sum(s.trips for s in sources) == 10


async def test_a_lowered_limit_applies_at_once(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    assert (await replicas[0].admit([Check("rpm:k:key_o", 1000, 60)])).admitted  # leases 16 more calls
    assert not (await replicas[0].admit([Check("rpm:k:key_o", 1, 60)])).admitted


async def test_an_idle_lease_goes_back_within_seconds(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    batch = await replicas[0].admit([Check("rpm:k:key_p", 1000, 60)], Slot("conc:key_p", 64))
    await replicas[0].finish("conc:key_p", [], batch.slot_token)
    assert await _used(clients[2], prefix, "rpm:k:key_p") == 1 + limit_leases.LEASE_CALLS
    assert await clients[2].zcard(f"{prefix}slots:conc:key_p") == 1 + limit_leases.LEASE_SLOTS
    await asyncio.sleep(2.5 * limit_leases.IDLE_SECONDS)  # swept once a second: gone within two sweeps
    assert await clients[2].zcard(f"{prefix}slots:conc:key_p") == 0  # the other replica may take them now
    assert await _used(clients[2], prefix, "rpm:k:key_p") == 1
    await replicas[0].close()


async def test_a_concurrency_limit_holds_across_replicas(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    slot = Slot("conc:key_q", 10)
    batches = await asyncio.gather(*(replicas[i % 2].admit([], slot) for i in range(40)))
    held = [(i, b) for i, b in enumerate(batches) if b.admitted]
    assert 8 <= len(held) <= 10
    assert await clients[2].zcard(f"{prefix}slots:conc:key_q") == 10 or len(held) == 10
    for i, b in held:
        await replicas[i % 2].finish(slot.key, [], b.slot_token)
    for replica in replicas:
        await replica.close()
    assert await clients[2].zcard(f"{prefix}slots:conc:key_q") == 0


async def test_usage_past_the_lease_is_owed_and_reaches_redis_within_seconds(clients: list[Redis], prefix: str) -> None:
    sources, replicas = _replicas(clients, prefix)
    tokens = Check("tpm:k:key_r", 100_000, 60, cost=100)
    batch = await replicas[0].admit([tokens])
    assert await _used(clients[2], prefix, tokens.key) == 100 * (1 + limit_leases.LEASE_CALLS)
    trips = sources[0].trips
    await replicas[0].finish(None, [Check(tokens.key, 0, 60, 5000)], batch.slot_token)  # more than the lease holds
    assert sources[0].trips == trips  # counted here, not a round trip
    await asyncio.sleep(2.5 * limit_leases.IDLE_SECONDS)
    assert await _used(clients[2], prefix, tokens.key) == 100 + 5000  # the lease back, the usage added
    await replicas[0].close()


async def test_a_burst_on_one_replica_gets_the_whole_limit(clients: list[Redis], prefix: str) -> None:
    """Calls that find no lease wait for the one being taken: a cold burst neither takes a lease each (and
    refuses itself with them) nor passes the limit."""
    sources, replicas = _replicas(clients, prefix)
    checks = [Check("rpm:k:key_s", 100, 60), Check("rpm:u:9", 1000, 60)]
    batches = await asyncio.gather(*(replicas[0].admit(checks, Slot("conc:key_s", 1000)) for _ in range(100)))
    assert all(b.admitted for b in batches)
    assert sorted(b.windows[0].used for b in batches) == list(range(1, 101))
    assert sources[0].trips < 50
    assert not (await replicas[0].admit(checks, Slot("conc:key_s", 1000))).admitted
    await replicas[0].close()


class Gated(Counting):
    """Leases wait for `gate`; give_back fails while `failing` (as with Redis unreachable)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis, prefix)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = 0
        self.answers_lost = 0
        self.leases_fail = 0

    async def lease(self, *args: object, **kwargs: object) -> limit_leases.Lease:
        await self.gate.wait()
        if self.leases_fail:
            self.leases_fail -= 1
            raise redis_exceptions.ConnectionError("unreachable")
        return await super().lease(*args, **kwargs)

    async def give_back(
        self, slot_key: str | None, tokens: Sequence[str], unused: Sequence[tuple[Check, float]], send_id: str = ""
    ) -> None:
        if self.failing:
            self.failing -= 1
            raise redis_exceptions.ConnectionError("unreachable")
        await super().give_back(slot_key, tokens, unused, send_id)
        if self.answers_lost:  # it arrived, but its answer did not
            self.answers_lost -= 1
            raise redis_exceptions.TimeoutError("Redis did not answer")


async def test_a_hold_kept_after_the_sweep_stopped_still_goes_back(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    batch = await replicas[0].admit([Check("rpm:k:key_t", 1000, 60)], Slot("conc:key_t", 64))
    await asyncio.sleep(2.5 * limit_leases.IDLE_SECONDS)  # a long call: its lease and spare holds go back meanwhile
    assert await clients[2].zcard(f"{prefix}slots:conc:key_t") == 1  # its own hold only
    await replicas[0].finish("conc:key_t", [], batch.slot_token)  # kept for the next call, on a quiet replica
    await asyncio.sleep(2.5 * limit_leases.IDLE_SECONDS)
    assert await clients[2].zcard(f"{prefix}slots:conc:key_t") == 0
    await replicas[0].close()


async def test_close_while_a_lease_is_on_its_way_keeps_nothing(clients: list[Redis], prefix: str) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    checks = [Check("rpm:k:key_u", 1000, 60), Check("tpm:k:key_u", 100_000, 60, cost=50)]
    source.gate.clear()
    call = asyncio.ensure_future(leased.admit(checks, Slot("conc:key_u", 64)))
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(leased.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the lease
    source.gate.set()
    batch = await call
    await closing
    assert batch.admitted and len(batch.windows) == 2
    assert await clients[2].zcard(f"{prefix}slots:conc:key_u") == 1  # the call's own; the spares went back
    assert await _used(clients[2], prefix, "tpm:k:key_u") == 50
    await leased.finish("conc:key_u", [], batch.slot_token)
    assert await clients[2].zcard(f"{prefix}slots:conc:key_u") == 0


async def test_when_the_lease_taker_goes_away_the_burst_still_gets_the_limit(clients: list[Redis], prefix: str) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    checks = [Check("rpm:k:key_v", 100, 60)]
    source.gate.clear()
    owner = asyncio.ensure_future(leased.admit(checks))
    await asyncio.sleep(0.01)
    burst = [asyncio.ensure_future(leased.admit(checks)) for _ in range(99)]
    await asyncio.sleep(0.01)
    owner.cancel()  # its caller went away while its lease was on its way
    await asyncio.sleep(0.01)
    source.gate.set()
    batches = await asyncio.gather(*burst)
    assert all(b.admitted for b in batches)  # the owner's lease became this process's, unused, and served them
    await leased.close()
    assert await _used(clients[2], prefix, "rpm:k:key_v") == 99


async def test_a_failed_give_back_loses_no_usage_and_no_hold(clients: list[Redis], prefix: str) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    tokens = Check("tpm:k:key_w", 100_000, 60, cost=100)
    batch = await leased.admit([tokens], Slot("conc:key_w", 64))
    await leased.finish("conc:key_w", [Check(tokens.key, 0, 60, 5000)], batch.slot_token)
    source.failing = 1  # the first sweep's give-back is lost
    await asyncio.sleep(3.5 * limit_leases.IDLE_SECONDS)
    assert await _used(clients[2], prefix, tokens.key) >= 100 + 5000  # owed usage sent again
    assert await clients[2].zcard(f"{prefix}slots:conc:key_w") == 0  # holds released again
    await leased.close()


async def test_one_replica_never_refuses_a_call_its_own_lease_makes_room_for(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    assert (await replicas[0].admit([Check("tpm:k:key_x", 1000, 60, cost=10)])).admitted  # a lease of 123 more
    batch = await replicas[0].admit([Check("tpm:k:key_x", 1000, 60, cost=900)])  # 10 + 900 <= 1000
    assert batch.admitted and batch.windows[0].used == 910
    assert not (await replicas[0].admit([Check("tpm:k:key_x", 1000, 60, cost=91)])).admitted
    await replicas[0].close()
    assert await _used(clients[2], prefix, "tpm:k:key_x") == 910


async def test_a_give_back_sent_again_after_its_answer_was_lost_counts_once(clients: list[Redis], prefix: str) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    tokens = Check("tpm:k:key_y", 100_000, 60, cost=100)
    batch = await leased.admit([tokens])
    await leased.finish(None, [Check(tokens.key, 0, 60, 5000)], batch.slot_token)  # 1,600 leased, 3,400 owed
    source.answers_lost = 2  # the sweep's give-back arrives twice without an answer, then once more
    await asyncio.sleep(4.5 * limit_leases.IDLE_SECONDS)
    assert await _used(clients[2], prefix, tokens.key) == 100 + 5000
    await leased.close()


async def test_calls_waiting_on_a_lease_that_failed_ask_for_exactly_what_they_need(
    clients: list[Redis], prefix: str
) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    checks = [Check("rpm:k:key_z", 1000, 60)]
    source.gate.clear()
    source.leases_fail = 1
    owner = asyncio.ensure_future(leased.admit(checks))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(leased.admit(checks)) for _ in range(9)]
    await asyncio.sleep(0.01)
    source.gate.set()
    with pytest.raises(redis_exceptions.ConnectionError):
        await owner
    batches = await asyncio.gather(*waiting)
    assert all(b.admitted for b in batches)
    # each asked at once for its own call (one exchange, no lease each in turn after a timeout each)
    assert await _used(clients[2], prefix, "rpm:k:key_z") == 9
    await leased.close()


async def test_calls_waiting_when_the_limiter_closes_take_no_lease(clients: list[Redis], prefix: str) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    checks = [Check("rpm:k:key_aa", 1000, 60)]
    slot = Slot("conc:key_aa", 64)
    source.gate.clear()
    calls = [asyncio.ensure_future(leased.admit(checks, slot)) for _ in range(40)]
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(leased.close())
    await asyncio.sleep(0.01)
    source.gate.set()
    batches = await asyncio.gather(*calls)
    await closing
    assert all(b.admitted for b in batches)
    for b in batches:
        await leased.finish(slot.key, [], b.slot_token)
    assert await _used(clients[2], prefix, "rpm:k:key_aa") == 40  # nothing kept past close
    assert await clients[2].zcard(f"{prefix}slots:conc:key_aa") == 0


async def test_a_lease_the_sweep_forgets_while_a_call_is_asking_still_serves_it(
    clients: list[Redis], prefix: str
) -> None:
    source = Gated(clients[0], prefix)
    leased = LeasedLimiter(source, clock=clock)
    rpm, tpm = Check("rpm:k:key_ab", 1000, 60), Check("tpm:k:key_ab", 100_000, 60, cost=10)
    first = await leased.admit([rpm, tpm], Slot("conc:key_ab", 64))
    await leased.finish("conc:key_ab", [Check(tpm.key, 0, 60, 160)], first.slot_token)  # its tpm lease used up
    source.gate.clear()
    call = asyncio.ensure_future(leased.admit([rpm, tpm, Check("rpm:u:ab", 1000, 60, cost=0)]))
    await asyncio.sleep(2.5 * limit_leases.IDLE_SECONDS)  # the sweep gives the rpm lease back meanwhile
    source.gate.set()
    batch = await call
    assert batch.admitted
    assert batch.windows[0].used == 2
    await leased.close()


async def test_tokens_owed_count_against_the_next_call_at_once(clients: list[Redis], prefix: str) -> None:
    """Completion tokens past a lease are not left for the sweep: the next call asks Redis with them, so a tokens
    limit refuses as soon as it would without leases (each call here: 10 tokens asked, 150 used)."""
    _, replicas = _replicas(clients, prefix)
    reference = LocalLimiter(clock=clock)
    for limiter in (replicas[0], reference):
        admitted = 0
        for _ in range(12):
            batch = await limiter.admit([Check("tpm:k:key_ac", 400, 60, cost=10)])
            if not batch.admitted:
                break
            admitted += 1
            await limiter.finish(None, [Check("tpm:k:key_ac", 0, 60, 150)], batch.slot_token)
        assert admitted == 3, limiter
    await replicas[0].close()


async def test_a_limit_lowered_applies_at_once_across_replicas(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    for i in range(10):
        assert (await replicas[i % 2].admit([Check("rpm:k:key_ad", 200, 60)])).admitted
    later = [await replicas[i % 2].admit([Check("rpm:k:key_ad", 12, 60)]) for i in range(10)]
    assert sum(b.admitted for b in later) <= 2  # never past the new limit, whatever each replica's lease holds
    for replica in replicas:
        await replica.close()


async def test_a_process_that_dies_frees_its_kept_places_within_a_minute(clients: list[Redis], prefix: str) -> None:
    """Slot holds kept for reuse live 60 s on Redis unless their process keeps them: one killed (no clean stop)
    costs the key its places for a minute, not the 15 minutes a call in flight may take."""
    _, replicas = _replicas(clients, prefix)
    slot = Slot("conc:key_ae", 64)
    batch = await replicas[0].admit([], slot)
    await replicas[0].finish(slot.key, [], batch.slot_token)  # kept for the next call
    assert await clients[2].zcard(f"{prefix}slots:{slot.key}") == 1 + limit_leases.LEASE_SLOTS
    # A minute later, as seen by another process, this one having died without a clean stop (had it lived, it would
    # have moved its holds' deadlines on by then: the next test).
    later = Counting(clients[1], prefix)
    other = LeasedLimiter(later, clock=lambda: clock() + limit_leases.HOLD_TTL + 1)
    batches = await asyncio.gather(*(other.admit([], slot) for _ in range(64)))
    assert all(b.admitted for b in batches)
    await other.close()


async def test_a_live_process_keeps_its_holds(clients: list[Redis], prefix: str) -> None:
    _, replicas = _replicas(clients, prefix)
    slot = Slot("conc:key_af", 64)
    batch = await replicas[0].admit([], slot)
    key = f"{prefix}slots:{slot.key}"
    first = await clients[2].zscore(key, batch.slot_token)
    assert first is not None and first <= clock() + limit_leases.HOLD_TTL
    await asyncio.sleep(1.5 * limit_leases.IDLE_SECONDS)  # a sweep: the call still runs, its hold is kept
    kept = await clients[2].zscore(key, batch.slot_token)
    assert kept is not None and kept > first
    await replicas[0].finish(slot.key, [], batch.slot_token)
    await replicas[0].close()
    assert await clients[2].zcard(key) == 0


async def test_a_call_finished_during_an_outage_is_not_kept_alive(
    clients: list[Redis], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished while the limits are on the local fallback, a call's hold is no longer kept alive: it lapses within
    HOLD_TTL instead of holding its place for as long as the process lives."""
    monkeypatch.setattr(limit_leases, "HOLD_TTL", 2)
    monkeypatch.setattr(limit_leases, "KEEP_SECONDS", 0.5)
    source = Gated(clients[0], prefix)
    limiter = redis_limits.FallbackLimiter(LeasedLimiter(source, clock=clock), "open")
    slot = Slot("conc:key_ag", 1)
    call = await limiter.admit([], slot)
    assert call.admitted
    source.leases_fail = 1
    await limiter.admit([Check("rpm:k:other", 1000, 60)])  # Redis fails: the outage starts, local counters meanwhile
    await limiter.finish(slot.key, [], call.slot_token)  # on the local fallback
    await asyncio.sleep(4 * limit_leases.IDLE_SECONDS)
    plain = redis_limits.RedisLimiter(clients[2], prefix, clock=clock)
    assert (await plain.admit([], slot)).admitted  # the place lapsed on Redis
    await limiter.close()


async def test_a_tokens_lease_covers_the_completion_tokens_calls_use(clients: list[Redis], prefix: str) -> None:
    """Calls asking 10 tokens (the prompt) and using 150 more (the completion): a lease sized by the prompt alone ran
    out after one call, and every call went to Redis. Sized by what calls use, most skip it."""
    sources, replicas = _replicas(clients, prefix)
    for _ in range(100):
        batch = await replicas[0].admit([Check("tpm:k:key_pc", 10**6, 60, cost=10)])
        assert batch.admitted
        await replicas[0].finish(None, [Check("tpm:k:key_pc", 0, 60, 150)], batch.slot_token)
    assert sources[0].trips <= 100 // limit_leases.LEASE_CALLS + 4
    await replicas[0].close()
    assert await _used(clients[2], prefix, "tpm:k:key_pc") == 100 * 160
