"""Bearer key -> Caller, with a short-lived cache of known keys. API layer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

from starlette.requests import Request

from aipower.api.client_ip import Network, client_ip
from aipower.errors import AuthenticationFailed, PermissionDenied, RateLimited
from aipower.gateway import billing
from aipower.gateway import keys as key_format
from aipower.gateway.limits import RateLimiter
from aipower.gateway.protocols import Caller, KeyStore

_MAX_CACHED = 10_000


class Authenticator:
    """Resolves API keys. Found keys are cached for `ttl` seconds, so a revocation takes effect within ttl.

    Failed attempts are counted per client IP; past `failures_per_minute` that IP gets 429 for the rest of
    the minute, whatever key it sends, which makes guessing keys slow.
    """

    def __init__(self, store: KeyStore, ttl: float, guard: AuthGuard) -> None:
        self._store = store
        self._ttl = ttl
        self._guard = guard
        self._cache: dict[str, tuple[Caller, float]] = {}
        self._finding: dict[str, asyncio.Task[Caller | None]] = {}  # digest -> the store lookup in flight

    async def caller(self, request: Request) -> Caller:
        """The caller of an HTTP request, with its client IP resolved through the trusted proxies."""
        peer = request.client.host if request.client else None
        ip = client_ip(peer, request.headers.get("x-forwarded-for"), self._guard.trusted)
        return await self._authenticate(request.headers, ip)

    async def _authenticate(self, headers: Mapping[str, str], client_ip: str | None) -> Caller:
        await self._guard.check(client_ip)
        caller = await self._resolve(headers, client_ip)
        if caller.is_demo:  # the demo key's limits count per address; nothing else reads it (a copy costs 3 us a call)
            caller = replace(caller, client_ip=client_ip)
        return caller

    async def _resolve(self, headers: Mapping[str, str], client_ip: str | None) -> Caller:
        """The caller, or AuthenticationFailed, counted against the address."""
        try:
            digest = key_format.digest(_bearer(headers.get("authorization")))
        except AuthenticationFailed:
            await self._guard.failed(client_ip)
            raise
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            caller = cached[0]
        else:
            async with self._guard.gate(client_ip):
                found = await self._find(digest)
                if found is None:
                    await self._guard.failed(client_ip)  # counted before the address's next lookup starts
                    raise AuthenticationFailed(
                        "Incorrect API key provided. Check it for typos, or ask the operator for a new one "
                        "(`aipower keys create EMAIL`).",
                        code="invalid_api_key",
                    )
            caller = replace(found, is_demo=digest == self._guard.demo_digest)
            self._remember(digest, caller, now)
        try:
            _check_usable(caller)
        except AuthenticationFailed:
            await self._guard.failed(client_ip)
            raise
        return caller

    async def _find(self, digest: str) -> Caller | None:
        """One store lookup per key at a time: callers that miss together share it. A busy key's cache entry
        expires under all its callers at once; without this each of them queried the database (on PostgreSQL at
        c=32, enough at once to open and close a dozen pooled connections every `ttl` seconds)."""
        lookup = self._finding.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._store.find(digest))
            self._finding[digest] = lookup
            lookup.add_done_callback(partial(self._found, digest))
        return await asyncio.shield(lookup)  # a caller that goes away leaves the lookup to the others

    def _found(self, digest: str, lookup: asyncio.Task[Caller | None]) -> None:
        self._finding.pop(digest, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too: every caller that awaited it may have gone away

    def _remember(self, digest: str, caller: Caller, now: float) -> None:
        if self._ttl <= 0:
            return
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (caller, now + self._ttl)


@dataclass(slots=True)
class _Gate:
    turns: asyncio.Semaphore
    users: int = 0


class AuthGuard:
    """Counts failed authentications per client IP (through the shared RateLimiter).

    An address found under the limit is trusted for `recheck_seconds` (1 s) without asking the limiter again, so
    callers with good keys cost no limiter round trip per request (a Redis one, with several replicas). A failure
    from an address forgets that at once: every guess is checked against the shared count. So only an address
    blocked by failures seen on another replica may go on using a valid key here for up to `recheck_seconds`.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        failures_per_minute: int,
        demo_key: str,
        trusted: Sequence[Network] = (),
        *,
        recheck_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._limit = failures_per_minute
        self.trusted = tuple(trusted)
        self.demo_digest = key_format.digest(demo_key) if demo_key else None
        self._recheck = recheck_seconds
        self._clock = clock
        self._clear: dict[str, float] = {}  # address -> until when it counts as under the limit
        self._gates: dict[str, _Gate] = {}  # address -> its key lookups in flight (see gate())

    async def check(self, client_ip: str | None) -> None:
        if not self._limit or client_ip is None:
            return
        now = self._clock()
        if self._clear.get(client_ip, 0.0) > now:
            return
        window = await self._limiter.hit(f"authfail:{client_ip}", self._limit, 60, cost=0)
        if window.used >= self._limit:
            error = RateLimited(
                "Too many failed authentication attempts from your address. Wait for the reset and check your key.",
                code="too_many_failed_authentications",
                retry_after=max(1, math.ceil(window.reset_seconds)),
            )
            raise error
        if len(self._clear) >= _MAX_CACHED:
            self._clear.clear()
        self._clear[client_ip] = now + self._recheck

    @contextlib.asynccontextmanager
    async def gate(self, client_ip: str | None) -> AsyncIterator[None]:
        """Key lookups from one address run at most `failures_per_minute` at a time; the others wait, and are
        checked against the count again when their turn comes. So a burst of guesses sent at once is counted as if
        sent one after another (only the first `failures_per_minute` reach the database), while valid keys behind
        one address only queue. Cached keys never come here."""
        if not self._limit or client_ip is None:
            yield
            return
        gate = self._gates.get(client_ip)
        if gate is None:
            gate = self._gates[client_ip] = _Gate(asyncio.Semaphore(self._limit))
        gate.users += 1
        try:
            async with gate.turns:
                await self.check(client_ip)
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[client_ip]

    async def failed(self, client_ip: str | None) -> None:
        if self._limit and client_ip is not None:
            self._clear.pop(client_ip, None)
            await self._limiter.add(f"authfail:{client_ip}", 60, 1)


def own_account(caller: Caller, what: str) -> Caller:
    """The caller, if it may read or change what its account keeps. The public demo key may not: everyone who uses
    it shares one account, so one demo caller would see, continue or delete another's."""
    if caller.is_demo:
        raise PermissionDenied(
            f"The public demo key cannot use {what}: everyone who uses that key shares its account. "
            "Use a key of your own (`aipower keys create EMAIL`).",
            code="not_available_on_demo_key",
        )
    return caller


def _check_usable(caller: Caller) -> None:
    """A known key that may not be used now: revoked, or expired (checked on every request: the cache never extends
    a key's life)."""
    if caller.revoked:
        raise AuthenticationFailed(
            "This API key has been revoked. Use another key, or ask the operator for a new one.",
            code="revoked_api_key",
        )
    if caller.expires_at is not None:
        billing.check_expiry(caller, dt.datetime.now(dt.UTC))


def _bearer(header: str | None) -> str:
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header: "
            "'Authorization: Bearer sk-aipower-...'.",
            code="missing_api_key",
        )
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed(
            "Malformed Authorization header: expected 'Bearer <your API key>'.", code="malformed_authorization"
        )
    if not key_format.is_well_formed(key):
        raise AuthenticationFailed(
            f"Malformed API key: aipower keys start with '{key_format.KEY_PREFIX}'.", code="malformed_api_key"
        )
    return key
