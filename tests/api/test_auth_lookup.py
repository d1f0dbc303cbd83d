"""Authenticator's key lookups: callers that miss the cache together share one store lookup."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from aipower.api.auth import Authenticator, AuthGuard
from aipower.errors import AuthenticationFailed
from aipower.gateway import keys as key_format
from aipower.gateway.limits import LocalLimiter
from aipower.gateway.protocols import Caller

KEY = "sk-aipower-lookup-test-key"


class SlowStore:
    """A key store that takes a while to answer, and counts how often it is asked."""

    def __init__(self, known: dict[str, Caller]) -> None:
        self.known = known
        self.lookups = 0

    async def find(self, digest: str) -> Caller | None:
        self.lookups += 1
        await asyncio.sleep(0.05)
        return self.known.get(digest)


def request(key: str) -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())]
    return Request({"type": "http", "headers": headers, "client": ("203.0.113.9", 4000)})


def authenticator(store: SlowStore, ttl: float = 5.0) -> Authenticator:
    return Authenticator(store, ttl, AuthGuard(LocalLimiter(), 1000, ""))


async def test_callers_that_miss_together_share_one_lookup() -> None:
    store = SlowStore({key_format.digest(KEY): Caller("key_1", 1)})
    auth = authenticator(store)
    callers = await asyncio.gather(*(auth.caller(request(KEY)) for _ in range(20)))
    assert [c.key_id for c in callers] == ["key_1"] * 20
    assert store.lookups == 1
    await auth.caller(request(KEY))  # cached now
    assert store.lookups == 1


async def test_without_a_cache_each_wave_of_callers_looks_the_key_up_again() -> None:
    store = SlowStore({key_format.digest(KEY): Caller("key_1", 1)})
    auth = authenticator(store, ttl=0)
    await asyncio.gather(*(auth.caller(request(KEY)) for _ in range(5)))
    await asyncio.gather(*(auth.caller(request(KEY)) for _ in range(5)))
    assert store.lookups == 2  # a revocation is seen by the next lookup


async def test_an_unknown_key_is_refused_to_every_caller_that_shared_the_lookup() -> None:
    store = SlowStore({})
    auth = authenticator(store)
    results = await asyncio.gather(*(auth.caller(request(KEY)) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, AuthenticationFailed) and r.code == "invalid_api_key" for r in results)
    assert store.lookups == 1


async def test_a_caller_that_goes_away_leaves_the_lookup_to_the_others() -> None:
    store = SlowStore({key_format.digest(KEY): Caller("key_1", 1)})
    auth = authenticator(store)
    first = asyncio.ensure_future(auth.caller(request(KEY)))
    second = asyncio.ensure_future(auth.caller(request(KEY)))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).key_id == "key_1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.lookups == 1


async def test_a_burst_of_guesses_from_one_address_is_counted_like_guesses_sent_in_turn() -> None:
    """With 3 failures a minute allowed, 200 different keys sent at once from one address: only 3 reach the store
    and are refused as unknown; the rest wait their turn, and are refused as the address's count is reached."""
    store = SlowStore({})
    auth = Authenticator(store, 5.0, AuthGuard(LocalLimiter(), 3, ""))
    guesses = [f"sk-aipower-guess{n:04d}" for n in range(200)]
    outcomes = await asyncio.gather(*(auth.caller(request(key)) for key in guesses), return_exceptions=True)
    codes = [getattr(outcome, "code", None) for outcome in outcomes]
    assert codes.count("invalid_api_key") == 3
    assert codes.count("too_many_failed_authentications") == 197
    assert store.lookups == 3


async def test_valid_keys_behind_one_address_queue_but_all_get_in() -> None:
    """Many users behind one address (a NAT, a proxy not listed as trusted), each with their own key, all missing
    the cache at once: more lookups than the failure limit, none of them refused."""
    keys = {f"sk-aipower-user{n:03d}": Caller(f"key_{n}", n) for n in range(10)}
    store = SlowStore({key_format.digest(key): caller for key, caller in keys.items()})
    auth = Authenticator(store, 5.0, AuthGuard(LocalLimiter(), 3, ""))
    callers = await asyncio.gather(*(auth.caller(request(key)) for key in keys))
    assert [c.key_id for c in callers] == [c.key_id for c in keys.values()]
    assert store.lookups == 10
