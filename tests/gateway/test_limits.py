"""In-process limits and the admission rules (demo key, concurrency, rpm, tpm) with an injected clock."""

from __future__ import annotations

import pytest

from aipower import catalog as catalog_file
from aipower.errors import PermissionDenied, RateLimited
from aipower.gateway.admission import Admission, LimitPolicy, rate_headers
from aipower.gateway.limits import Check, LocalLimiter, Slot
from aipower.gateway.protocols import Caller, Limits

MODELS = catalog_file.load().models
CHEAP = [MODELS["deepseek/deepseek-chat"]]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_fixed_window_admits_exactly_the_limit_then_resets() -> None:
    clock = Clock(120.0)
    limiter = LocalLimiter(clock)
    results = [await limiter.hit("k", 3, 60) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert results[-1].remaining == 0 and results[-1].reset_seconds == 60
    clock.now = 179.5
    assert (await limiter.hit("k", 3, 60)).allowed is False
    clock.now = 180.0  # the next minute
    assert (await limiter.hit("k", 3, 60)).used == 1


async def test_costs_and_unconditional_adds() -> None:
    limiter = LocalLimiter(Clock(0.0))
    assert (await limiter.hit("t", 100, 60, cost=60)).allowed
    assert not (await limiter.hit("t", 100, 60, cost=50)).allowed  # 110 would pass the limit: nothing added
    await limiter.add("t", 60, 100)
    assert (await limiter.hit("t", 100, 60, cost=0)).used == 160


async def test_a_check_that_costs_nothing_stores_nothing() -> None:
    """The auth guard checks every caller's address with cost 0: a crowd of addresses must not fill the table."""
    limiter = LocalLimiter(Clock())
    for n in range(1000):
        assert (await limiter.hit(f"authfail:10.0.{n // 256}.{n % 256}", 20, 60, cost=0)).allowed
    assert len(limiter) == 0
    await limiter.hit("authfail:10.0.0.1", 20, 60)
    assert (await limiter.hit("authfail:10.0.0.1", 20, 60, cost=0)).used == 1


async def test_ended_windows_are_dropped_once_the_table_is_large() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    for n in range(100_001):
        await limiter.hit(f"k{n}", 5, 60)
    assert len(limiter) == 100_001  # all live: kept
    clock.now += 60
    await limiter.hit("late", 5, 60)
    assert len(limiter) == 1


async def test_concurrency_slots() -> None:
    limiter = LocalLimiter()
    assert [(await limiter.admit([], Slot("c", 2))).admitted for _ in range(3)] == [True, True, False]
    await limiter.finish("c", [])
    assert (await limiter.admit([], Slot("c", 2))).admitted


async def test_batch_is_all_or_nothing() -> None:
    limiter = LocalLimiter(Clock(30.0))
    checks = [Check("a", 3, 60), Check("b", 100, 60, cost=40)]
    first = await limiter.admit(checks, Slot("c", 5))
    assert first.admitted and [w.used for w in first.windows] == [1, 40]
    assert [w.reset_seconds for w in first.windows] == [30.0, 30.0]
    await limiter.admit(checks)
    refused = await limiter.admit(checks, Slot("c", 5))  # b would reach 120: neither a, b nor the slot counts
    assert not refused.admitted and refused.slot_free
    assert [(w.allowed, w.used) for w in refused.windows] == [(True, 2), (False, 80)]
    full = await limiter.admit([Check("a", 3, 60)], Slot("c", 1))  # the slot is taken: a does not count
    assert not full.admitted and not full.slot_free and full.windows[0].allowed
    assert (await limiter.hit("a", 3, 60, cost=0)).used == 2
    await limiter.finish("c", [Check("b", 0, 60, cost=25)])  # the limit is ignored when adding usage
    assert (await limiter.hit("b", 100, 60, cost=0)).used == 105
    assert (await limiter.admit([], Slot("c", 1))).admitted  # released


def caller(**changes: object) -> Caller:
    values: dict[str, object] = {"key_id": "key_a", "user_id": 1}
    values.update(changes)
    return Caller(**values)  # type: ignore[arg-type]


async def test_requests_per_minute_per_key_and_per_user() -> None:
    admission = Admission(LocalLimiter(Clock()), LimitPolicy(rpm=2, tpm=0, max_concurrent=100))
    for _ in range(2):
        ticket = await admission.admit(caller(), CHEAP, 10)
        await admission.finish(ticket, 0)
    with pytest.raises(RateLimited) as info:
        await admission.admit(caller(), CHEAP, 10)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    # another key of the same user shares the user's limit
    with pytest.raises(RateLimited):
        await admission.admit(caller(key_id="key_b"), CHEAP, 10)
    # an override raises this key's own limit, but the user's limit still holds
    with pytest.raises(RateLimited):
        await admission.admit(caller(limits=Limits(key_rpm=10)), CHEAP, 10)
    ticket = await admission.admit(caller(limits=Limits(key_rpm=10, user_rpm=0)), CHEAP, 10)
    assert ticket.requests is not None and ticket.requests.limit == 10


async def test_tokens_per_minute_count_the_estimate_then_the_real_output() -> None:
    admission = Admission(LocalLimiter(Clock()), LimitPolicy(rpm=0, tpm=1000, max_concurrent=100))
    ticket = await admission.admit(caller(), CHEAP, 400)
    await admission.finish(ticket, 500)  # 400 estimated + 500 produced = 900
    with pytest.raises(RateLimited) as info:
        await admission.admit(caller(), CHEAP, 200)
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "100"
    await admission.finish(await admission.admit(caller(), CHEAP, 100), 0)


async def test_concurrency_cap_and_release_on_refusal() -> None:
    admission = Admission(LocalLimiter(Clock()), LimitPolicy(rpm=1, tpm=0, max_concurrent=1))
    ticket = await admission.admit(caller(), CHEAP, 1)
    with pytest.raises(RateLimited) as info:
        await admission.admit(caller(), CHEAP, 1)
    assert info.value.code == "too_many_concurrent_requests"
    await admission.finish(ticket, 0)
    with pytest.raises(RateLimited) as info:  # the rpm refusal must give the slot back
        await admission.admit(caller(), CHEAP, 1)
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(RateLimited) as info:  # ... and so must the next one
        await admission.admit(caller(), CHEAP, 1)
    assert info.value.code == "rate_limit_exceeded"
    admission_two = Admission(LocalLimiter(Clock()), LimitPolicy(rpm=5, tpm=0, max_concurrent=1))
    await admission_two.finish(await admission_two.admit(caller(), CHEAP, 1), 0)


async def test_demo_key_models_and_daily_quota_per_ip() -> None:
    clock = Clock(86_400 * 20_000 + 3_600)  # 01:00 UTC
    policy = LimitPolicy(rpm=0, tpm=0, demo_models=frozenset({"deepseek/deepseek-chat"}), demo_daily_calls=2)
    admission = Admission(LocalLimiter(clock), policy)
    demo = caller(is_demo=True, client_ip="203.0.113.7")
    with pytest.raises(PermissionDenied) as denied:
        await admission.admit(demo, [MODELS["openai/gpt-5"]], 1)
    assert denied.value.code == "model_not_allowed_on_demo_key"
    for _ in range(2):
        await admission.finish(await admission.admit(demo, CHEAP, 1), 0)
    with pytest.raises(RateLimited) as info:
        await admission.admit(demo, CHEAP, 1)
    assert info.value.code == "demo_quota_exceeded"
    assert info.value.retry_after == 23 * 3600  # until 00:00 UTC
    await admission.admit(caller(is_demo=True, client_ip="198.51.100.1"), CHEAP, 1)


async def test_a_refused_call_counts_nowhere() -> None:
    limiter = LocalLimiter(Clock(86_400 * 20_000))
    policy = LimitPolicy(rpm=5, tpm=100, max_concurrent=0, demo_models=frozenset({"deepseek/deepseek-chat"}))
    admission = Admission(limiter, policy)
    demo = caller(is_demo=True, client_ip="203.0.113.9", limits=Limits(user_tpm=1000))
    with pytest.raises(RateLimited) as info:  # the key's tpm refuses: no demo call, request or token is counted
        await admission.admit(demo, CHEAP, 150)
    assert info.value.code == "rate_limit_exceeded" and "100 tokens" in info.value.message
    assert info.value.headers["x-ratelimit-limit-tokens"] == "100"
    for key in ("demo:203.0.113.9", "rpm:k:key_a", "rpm:u:1", "tpm:u:1"):
        assert (await limiter.hit(key, 10**9, 60 if key[0] != "d" else 86_400, cost=0)).used == 0
    ticket = await admission.admit(demo, CHEAP, 30)
    assert ticket.tokens is not None and ticket.tokens.limit == 100 and ticket.tokens.remaining == 70
    assert ticket.requests is not None and ticket.requests.remaining == 4


def test_rate_headers_follow_openai_names() -> None:
    from aipower.gateway.limits import Window

    headers = rate_headers(Window(True, 60, 10, 12.2), Window(True, 1000, 1, 0.4))
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "50",
        "x-ratelimit-reset-requests": "13s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "999",
        "x-ratelimit-reset-tokens": "1s",
    }
