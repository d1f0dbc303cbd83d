"""create_app(settings) -> Starlette: the composition root wiring catalog, storage, providers and gateway."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from aipower import catalog as catalog_file
from aipower.api import gateway_error, http_error, routes, server_error
from aipower.api.auth import Authenticator, AuthGuard
from aipower.api.client_ip import parse_networks
from aipower.api.context import ApiContext
from aipower.api.models import ModelList
from aipower.errors import GatewayError
from aipower.gateway.admission import Admission, LimitPolicy
from aipower.gateway.deployments import resolve
from aipower.gateway.health import BreakerRules, MemoryHealthStore
from aipower.gateway.limit_leases import LeasedLimiter
from aipower.gateway.limits import LocalLimiter, RateLimiter
from aipower.gateway.protocols import HealthStore
from aipower.gateway.routing import Deployments, Router
from aipower.gateway.service import Gateway
from aipower.money import usd_to_nanos
from aipower.providers import WIRE_FORMATS
from aipower.providers.client import ProviderClient
from aipower.providers.transport import Timeouts, Transport
from aipower.settings import Settings, from_environ
from aipower.storage import db, keys
from aipower.storage.keys import SqlKeyStore
from aipower.storage.ledger import SqlLedger, new_owner
from aipower.storage.ledger_owners import HoldKeeper
from aipower.storage.reports import SqlAccountReader
from aipower.storage.request_log import BufferedRequestLog
from aipower.storage.responses import SqlResponseStore

if TYPE_CHECKING:  # redis is imported only when AIPOWER_REDIS_URL is set: ~6 MiB a process does not need otherwise
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Services:
    """Everything with a lifetime, built once per process."""

    engine: AsyncEngine
    transport: Transport
    request_log: BufferedRequestLog
    deployments: Deployments
    redis: Redis | None
    demo_key: str
    ledger: SqlLedger
    ledger_engine: AsyncEngine  # the ledger writer's own small pool (db.make_engine(..., ledger=True))
    limiter: RateLimiter
    keeper: HoldKeeper  # the ledger's heartbeat, and the sweep of stopped processes' holds


def build_deployments(settings: Settings) -> Deployments:
    catalog = catalog_file.load(settings.catalog_paths)
    return resolve(catalog, settings.provider_env, WIRE_FORMATS.keys())


def create_app(settings: Settings) -> Starlette:
    deployments = build_deployments(settings)
    engine = db.make_engine(settings.database_url)
    timeouts = Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.stream_idle_timeout)
    transport = Transport(timeouts, settings.upstream_max_connections)
    request_log = BufferedRequestLog(engine)
    redis = _connect_redis(settings.redis_url) if settings.redis_url else None
    ledger_engine = db.make_engine(settings.database_url, ledger=True)
    limiter = _limiter(settings, redis)
    owner = new_owner()
    keeper = HoldKeeper(engine, owner, settings.hold_beat_seconds)
    book = SqlLedger(ledger_engine, spares=settings.spare_holds, owner=owner, fenced=keeper.fenced)
    services = Services(
        engine, transport, request_log, deployments, redis, settings.demo_key, book, ledger_engine, limiter, keeper
    )
    upstream = ProviderClient(deployments.catalog, transport)
    router = _router(settings, deployments, redis)
    gateway = Gateway(
        deployments,
        upstream,
        request_log,
        services.ledger,
        deployments.catalog.billing,
        admission=Admission(limiter, _limit_policy(settings)),
        router=router,
    )
    guard = AuthGuard(
        limiter, settings.auth_failures_per_minute, settings.demo_key, parse_networks(settings.trusted_proxies)
    )
    available = {model_id: True for model_id in deployments.targets}

    async def database_ok() -> bool:
        return await db.ping(engine)

    app = Starlette(
        routes=routes(),
        exception_handlers={GatewayError: gateway_error, HTTPException: http_error, Exception: server_error},
        lifespan=_lifespan(services),
    )
    app.state.api = ApiContext(
        gateway=gateway,
        auth=Authenticator(SqlKeyStore(engine), settings.key_cache_seconds, guard),
        models=ModelList(deployments.catalog, available),
        accounts=SqlAccountReader(engine),
        unlock_nanos=usd_to_nanos(deployments.catalog.billing.unlock_topup_usd),
        max_body_bytes=settings.max_body_bytes,
        database_ok=database_ok,
        responses=SqlResponseStore(engine),
        router=router,
        operator_key_ids=frozenset(settings.operator_key_ids),
    )
    app.state.services = services
    return app


def _connect_redis(url: str) -> Redis:
    from aipower.storage import redis_limits  # lazy: see TYPE_CHECKING above

    return redis_limits.connect(url)


def _limiter(settings: Settings, redis: Redis | None) -> RateLimiter:
    """Redis-backed limits shared by every replica when configured; this process's own counters otherwise."""
    if redis is None:
        return LocalLimiter()
    from aipower.storage import redis_limits  # lazy: see TYPE_CHECKING above

    source = redis_limits.RedisLimiter(redis, settings.redis_prefix)
    shared: RateLimiter = LeasedLimiter(source) if settings.redis_limit_leases else source
    return redis_limits.FallbackLimiter(shared, settings.redis_failure_policy)


def _router(settings: Settings, deployments: Deployments, redis: Redis | None) -> Router:
    """Breakers and latency averages shared through Redis when configured; this process's own otherwise."""
    rules = BreakerRules(settings.breaker_failures, settings.breaker_cooldown)
    health: HealthStore = MemoryHealthStore(rules)
    if redis is not None:
        from aipower.storage import redis_health  # lazy: see TYPE_CHECKING above

        shared = redis_health.RedisHealthStore(
            redis, settings.redis_prefix, rules, sync_seconds=settings.health_sync_seconds
        )
        health = redis_health.FallbackHealthStore(shared, MemoryHealthStore(rules))
    return Router(deployments, health, budget=settings.failover_budget)


def _limit_policy(settings: Settings) -> LimitPolicy:
    return LimitPolicy(
        window_seconds=settings.rate_window_seconds,
        rpm=settings.default_rpm,
        tpm=settings.default_tpm,
        max_concurrent=settings.max_concurrent_per_key,
        demo_models=frozenset(settings.demo_models),
        demo_daily_calls=settings.demo_daily_calls,
    )


def _lifespan(services: Services) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.transport.start()
        await services.request_log.start()
        await keys.sync_demo_key(services.engine, services.demo_key)
        await services.keeper.start()  # before the first call: no hold is written without its owner's row
        try:
            yield
        finally:
            await services.limiter.close()  # first: leases and slot holds go back even if a later close fails
            await services.request_log.close()
            await services.ledger.close()
            await services.keeper.close()  # after: anything the ledger could not give back is abandoned at once
            await services.transport.close()
            await services.engine.dispose()
            await services.ledger_engine.dispose()
            if services.redis is not None:
                await services.redis.aclose()

    return lifespan


def create_app_from_environ() -> Starlette:
    """Factory for `uvicorn --factory` and multi-worker serving: settings from the environment."""
    app = create_app(from_environ())
    tune_collector()
    return app


def tune_collector() -> None:
    """For a serving process only (not in tests that build apps): make the cyclic garbage collector cheap.

    Python's defaults (700, 10, 10) run a collection every 700 net allocations and, every 100 of those, a full one
    that walks every live object. A gateway holding thousands of streams has millions of them: a full collection
    then took ~300 ms (every stream stalls meanwhile) and the collector 25% of the process's CPU. Here the objects
    made while starting (modules, catalog, compiled statements) are frozen out of all collections, and the young
    generation is collected every 50,000 allocations, by when a finished call's objects are gone: measured with
    3,000 held streams, collector time fell from 4.1 s to 0.6 s and CPU per stream by a third
    (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
