"""create_app(settings) -> Starlette: the composition root wiring catalog, storage, providers and gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from aipower import catalog as catalog_file
from aipower.api import gateway_error, http_error, routes, server_error
from aipower.api.auth import Authenticator
from aipower.api.context import ApiContext
from aipower.api.models import ModelList
from aipower.errors import GatewayError
from aipower.gateway.deployments import resolve
from aipower.gateway.routing import Deployments
from aipower.gateway.service import Gateway
from aipower.money import usd_to_nanos
from aipower.providers import WIRE_FORMATS
from aipower.providers.client import ProviderClient
from aipower.providers.transport import Timeouts, Transport
from aipower.settings import Settings, from_environ
from aipower.storage import db
from aipower.storage.keys import SqlKeyStore
from aipower.storage.ledger import SqlLedger
from aipower.storage.reports import SqlAccountReader
from aipower.storage.request_log import BufferedRequestLog


@dataclass(frozen=True, slots=True)
class Services:
    """Everything with a lifetime, built once per process."""

    engine: AsyncEngine
    transport: Transport
    request_log: BufferedRequestLog
    deployments: Deployments


def build_deployments(settings: Settings) -> Deployments:
    catalog = catalog_file.load(settings.catalog_paths)
    return resolve(catalog, settings.provider_env, WIRE_FORMATS.keys())


def create_app(settings: Settings) -> Starlette:
    deployments = build_deployments(settings)
    engine = db.make_engine(settings.database_url)
    timeouts = Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.stream_idle_timeout)
    transport = Transport(timeouts, settings.upstream_max_connections)
    request_log = BufferedRequestLog(engine)
    services = Services(engine, transport, request_log, deployments)
    upstream = ProviderClient(deployments.catalog, transport)
    gateway = Gateway(deployments, upstream, request_log, SqlLedger(engine), deployments.catalog.billing)
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
        auth=Authenticator(SqlKeyStore(engine), settings.key_cache_seconds),
        models=ModelList(deployments.catalog, available),
        accounts=SqlAccountReader(engine),
        unlock_nanos=usd_to_nanos(deployments.catalog.billing.unlock_topup_usd),
        max_body_bytes=settings.max_body_bytes,
        database_ok=database_ok,
    )
    app.state.services = services
    return app


def _lifespan(services: Services) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await services.transport.start()
        await services.request_log.start()
        try:
            yield
        finally:
            await services.request_log.close()
            await services.transport.close()
            await services.engine.dispose()

    return lifespan


def create_app_from_environ() -> Starlette:
    """Factory for `uvicorn --factory` and multi-worker serving: settings from the environment."""
    return create_app(from_environ())
