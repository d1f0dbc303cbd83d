"""HealthStore on Redis: circuit breakers and latency averages shared by every worker and replica. Storage layer.

One hash per deployment (`<prefix>health:<deployment>`) holds what `gateway.health.Breaker` holds. Recording
attempts ("count them, maybe open the breaker"), claiming the half-open probe and adding speed samples are Lua
scripts (`redis_health_lua`), so concurrent replicas never lose an update or let two probes through. Times are
Redis's own clock (`TIME`), so replicas on different hosts agree on when a cool-down ends; tests inject a clock
instead. A hash expires after a day without attempts (never before a cool-down could end): stale state does not
linger.

With `sync_seconds` > 0 (the gateway's `AIPOWER_HEALTH_SYNC_SECONDS`, 1 s by default) a request costs no Redis
command: the store answers from a mirror of the breakers, which the caller that finds it older than `sync_seconds`
refreshes (one pipeline: the queued samples, `TIME`, one HGETALL per deployment) while concurrent callers use it as
it is. Its clock is Redis's TIME at the refresh plus the monotonic time since. This process applies its own outcomes
to the mirror at once. Successes on a closed breaker and speed samples are queued, and sent with the next refresh
(within `sync_seconds` even if no call comes; at once when 256 wait). A failure, or any outcome on a breaker that is
not closed, is sent at once, after the queued samples, in order: a breaker opens in Redis when the threshold is
reached, and a probe's success closes it there. Admitting a call to a breaker the mirror sees closed is local;
otherwise the Lua script decides (and claims the probe), as before, so the probe stays one across replicas. So
another replica sees a breaker open or close at most `sync_seconds` (plus a round trip) late, and the averages at
most twice that. One task does this process's Redis traffic for the mirror, a round trip at a time, so concurrent
failures share one. `sync_seconds` = 0 sends every call to Redis (three round trips per request).

`FallbackHealthStore` keeps serving from this process's own breakers while Redis is unreachable (logged once
per outage) and tries Redis again at most once a second. A failed refresh or send fails the calls waiting for it
(so the fallback engages) and makes every later call go to Redis until a refresh succeeds; samples queued but not
yet sent when Redis fails are lost (they are averages and success counts; failures are sent at once).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from aipower.gateway import health as pure
from aipower.gateway.health import Breaker, BreakerRules, MemoryHealthStore, health
from aipower.gateway.protocols import CallOutcome, DeploymentHealth, HealthStore
from aipower.storage.redis_health_lua import (
    ADMIT,
    APPLY,
    REFUSED,
    Sample,
    admitted,
    apply_args,
    breaker,
    by_deployment,
)
from aipower.storage.redis_outage import OutageWords, RedisOutage

_DAY = 86_400
MAX_PENDING = 256  # queued samples that make the store send them without waiting for the next refresh


class RedisHealthStore:
    """HealthStore on Redis; `clock` (seconds) replaces Redis's TIME (and the monotonic clock that ages the mirror),
    for tests. `sync_seconds` > 0 answers from a mirror at most that old (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        rules: BreakerRules,
        clock: Callable[[], float] | None = None,
        *,
        sync_seconds: float = 0.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.rules = rules
        self._clock = clock
        self._sync_seconds = max(0.0, sync_seconds)
        self._ttl = int(max(_DAY, 4 * rules.cooldown))
        self._apply = redis.register_script(APPLY)
        self._admit = redis.register_script(ADMIT)
        # The mirror (sync_seconds > 0): breakers as of the last refresh, plus this process's samples since.
        self._mirror: dict[str, Breaker] = {}
        self._wanted: set[str] = set()  # deployments asked for that the mirror does not hold yet
        self._trusted = False  # a refresh succeeded and Redis has not failed since
        self._synced_at = -math.inf  # when (age clock) the last refresh was read
        self._redis_time = 0.0  # Redis's TIME at the last refresh, and the monotonic time it was read
        self._redis_time_at = 0.0
        self._pending: list[Sample] = []  # samples not yet sent, oldest first
        self._fetch_wait: asyncio.Future[None] | None = None  # the next round trip refreshes; resolved after it
        self._flush_wait: asyncio.Future[None] | None = None  # the next round trip sends the pending samples
        self._fetching = False  # the round trip under way refreshes
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # sends the queued samples if no call does first

    def _key(self, deployment: str) -> str:
        return f"{self._prefix}health:{deployment}"

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]:
        names = list(deployments)
        if not self._sync_seconds:
            return await self._read_now(names)
        await self._sync(names)
        now = self._now()
        return {name: health(name, self._mirror[name], now, self.rules) for name in names}

    async def admit(self, deployment: str) -> bool:
        if not self._sync_seconds:
            return admitted(await self._admit_now(deployment))[0] != REFUSED
        current = self._mirror.get(deployment)
        if self._trusted and current is not None and current.opened_at is None:
            return True
        try:
            answer, opened_at, probe_at = admitted(await self._admit_now(deployment))
        except BaseException:
            self._trusted = False
            raise
        current = self._mirror.get(deployment)
        if current is not None:  # what Redis says now (another replica may have closed, reopened or probed it)
            self._mirror[deployment] = replace(current, opened_at=opened_at, probe_at=probe_at)
        return answer != REFUSED

    async def record(self, outcome: CallOutcome) -> None:
        if not self._sync_seconds:
            await self._apply(
                keys=[self._key(outcome.deployment)], args=self._apply_args([(outcome.deployment, outcome)])
            )
        else:
            await self._queue((outcome.deployment, outcome))

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        if not self._sync_seconds:
            await self._apply(keys=[self._key(deployment)], args=self._apply_args([(deployment, tokens_per_s)]))
        else:
            await self._queue((deployment, tokens_per_s))

    # Every call to Redis (sync_seconds = 0).

    async def _read_now(self, names: list[str]) -> Mapping[str, DeploymentHealth]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in names:
                pipe.hgetall(self._key(name))
            results = await pipe.execute()
        seconds, micros = results[0]
        hashes = results[1:]
        now = self._clock() if self._clock is not None else int(seconds) + int(micros) / 1e6
        return {name: health(name, breaker(h), now, self.rules) for name, h in zip(names, hashes, strict=True)}

    async def _admit_now(self, deployment: str) -> object:
        args: list[str | int] = [self._now_arg(), repr(self.rules.cooldown), self._ttl]
        return await self._admit(keys=[self._key(deployment)], args=args)

    def _apply_args(self, samples: list[Sample]) -> list[str | int]:
        return apply_args(self._now_arg(), self.rules, self._ttl, samples)

    # The mirror (sync_seconds > 0).

    def _now(self) -> float:
        """The store's clock: Redis's TIME at the last refresh plus the monotonic time since (or the test clock)."""
        if self._clock is not None:
            return self._clock()
        return self._redis_time + (time.monotonic() - self._redis_time_at)

    def _due(self) -> bool:
        return (self._clock or time.monotonic)() - self._synced_at >= self._sync_seconds

    def _refreshing(self) -> bool:
        return self._fetch_wait is not None or self._fetching

    async def _sync(self, names: list[str]) -> None:
        """Refresh the mirror when it is older than sync_seconds: the caller that notices refreshes (and waits);
        concurrent callers use the mirror as it is, unless it lacks one of their deployments or Redis failed."""
        missing = [name for name in names if name not in self._mirror]
        if self._trusted and not missing and (not self._due() or self._refreshing()):
            return
        self._wanted.update(missing)
        await asyncio.shield(self._request(fetch=True))

    async def _queue(self, sample: Sample) -> None:
        """Apply a sample to the mirror now; send it at once when it may change a breaker's state for the other
        replicas (a failure, or any outcome on a breaker that is not closed), else with the next refresh."""
        deployment, value = sample
        current = self._mirror.get(deployment)
        if current is not None:
            self._mirror[deployment] = _local(current, sample, self._now(), self.rules)
        self._pending.append(sample)
        self._flush_soon()
        changes_state = isinstance(value, CallOutcome) and (
            not value.ok or current is None or current.opened_at is not None
        )
        if current is None or not self._trusted or changes_state:
            await asyncio.shield(self._request(fetch=False))
        elif self._due() and not self._refreshing():
            await asyncio.shield(self._request(fetch=True))
        elif len(self._pending) >= MAX_PENDING:
            await asyncio.shield(self._request(fetch=False))

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop; a store that outlived the loop of its pump (tests) forgets that loop's tasks."""
        loop = asyncio.get_running_loop()
        if loop is not self._pump_loop:
            self._pump_loop = loop
            self._pump_task = self._fetch_wait = self._flush_wait = self._timer = None
            self._fetching = False
        return loop

    def _flush_soon(self) -> None:
        """Queued samples reach Redis within sync_seconds even when no later call comes to send them."""
        loop = self._loop()
        if self._timer is None:
            self._timer = loop.call_later(self._sync_seconds, self._flush_queued)

    def _flush_queued(self) -> None:
        self._timer = None
        if self._pending:
            self._request(fetch=self._due() and not self._refreshing())

    def _request(self, *, fetch: bool) -> asyncio.Future[None]:
        """The next round trip (a refresh when `fetch`), resolved once it is done; the pump runs it."""
        loop = self._loop()
        waiter = self._fetch_wait if fetch else self._flush_wait
        if waiter is None:
            waiter = loop.create_future()
            waiter.add_done_callback(_retrieve)
            if fetch:
                self._fetch_wait = waiter
            else:
                self._flush_wait = waiter
        if self._pump_task is None:
            self._pump_task = loop.create_task(self._pump())
        return waiter

    async def _pump(self) -> None:
        """The one task that talks to Redis for the mirror: one round trip at a time, each sending every sample
        queued so far, and refreshing when asked to."""
        try:
            while self._fetch_wait is not None or self._flush_wait is not None:
                waiters = [w for w in (self._fetch_wait, self._flush_wait) if w is not None]
                self._fetching = self._fetch_wait is not None
                self._fetch_wait = self._flush_wait = None
                samples, self._pending = self._pending, []
                try:
                    await self._round_trip(samples, fetch=self._fetching)
                except BaseException as exc:
                    self._trusted = False
                    for waiter in waiters:
                        if isinstance(exc, Exception):
                            waiter.set_exception(exc)
                        else:
                            waiter.cancel()
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for waiter in waiters:
                        waiter.set_result(None)
                finally:
                    self._fetching = False
        finally:
            self._pump_task = None

    async def _round_trip(self, samples: list[Sample], *, fetch: bool) -> None:
        """Send the samples; when `fetch`, also read every mirrored or wanted deployment (those with samples come
        back from the script, so they are not read twice)."""
        groups = by_deployment(samples)
        if not groups and not fetch:
            return
        wanted = [*self._mirror, *(self._wanted - self._mirror.keys())] if fetch else []
        names = [name for name in wanted if name not in groups]
        results = await self._pipeline(groups, names, fetch=fetch)
        if fetch:
            seconds, micros = results[len(groups)]
            self._redis_time, self._redis_time_at = int(seconds) + int(micros) / 1e6, time.monotonic()
            for name, fields in zip(names, results[len(groups) + 1 :], strict=True):
                self._settle(name, breaker(fields))
        for deployment, reply in zip(groups, results, strict=False):
            self._settle(deployment, breaker(reply))
        if fetch:
            self._wanted.difference_update(wanted)
            self._synced_at = (self._clock or time.monotonic)()
            self._trusted = True

    async def _pipeline(self, groups: Mapping[str, list[Sample]], names: list[str], *, fetch: bool) -> list[Any]:
        """One pipeline: APPLY per deployment with samples, then (`fetch`) TIME and one HGETALL per name. The
        script is loaded (and the pipeline sent again) if Redis does not know it: no EVALSHA ran then."""
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for deployment, group in groups.items():
                    pipe.evalsha(self._apply.sha, 1, self._key(deployment), *self._apply_args(group))
                if fetch:
                    pipe.time()
                    for name in names:
                        pipe.hgetall(self._key(name))
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if attempt:
                        raise
            await self._redis.script_load(APPLY)
        raise AssertionError("unreachable")

    def _settle(self, deployment: str, stored: Breaker) -> None:
        """The mirror of a deployment: what Redis holds plus this process's samples it has not received yet."""
        now = self._now()
        for sample in self._pending:
            if sample[0] == deployment:
                stored = _local(stored, sample, now, self.rules)
        self._mirror[deployment] = stored


def _local(current: Breaker, sample: Sample, now: float, rules: BreakerRules) -> Breaker:
    value = sample[1]
    if isinstance(value, CallOutcome):
        return pure.record(current, value, now, rules)
    return pure.record_speed(current, value, rules)


def _retrieve(waiter: asyncio.Future[None]) -> None:
    """Mark a waiter's error as seen, so that nobody waiting on it is not logged as a lost exception."""
    if not waiter.cancelled():
        waiter.exception()


class FallbackHealthStore:
    """Redis while it answers; during an outage, this process's own breakers (Redis is retried once a second)."""

    def __init__(
        self, primary: HealthStore, local: MemoryHealthStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        words = OutageWords("circuit breakers", "using this process's own breakers", "breaker state is shared again")
        self._outage: RedisOutage[HealthStore] = RedisOutage(primary, local, words, None, clock)

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]:
        return await self._outage.run(lambda store: store.read(deployments))

    async def admit(self, deployment: str) -> bool:
        return await self._outage.run(lambda store: store.admit(deployment))

    async def record(self, outcome: CallOutcome) -> None:
        await self._outage.run(lambda store: store.record(outcome))

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        await self._outage.run(lambda store: store.record_speed(deployment, tokens_per_s))
