"""What the HTTP layer needs, built by app.py and kept on app.state. API layer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aipower.api.auth import Authenticator
from aipower.api.models import ModelList
from aipower.gateway.protocols import AccountReader, ResponseStore
from aipower.gateway.routing import Router
from aipower.gateway.service import Gateway


@dataclass(frozen=True, slots=True)
class ApiContext:
    gateway: Gateway
    auth: Authenticator
    models: ModelList
    accounts: AccountReader
    unlock_nanos: int
    max_body_bytes: int
    database_ok: Callable[[], Awaitable[bool]]
    responses: ResponseStore
    router: Router | None = None  # deployment health for /v1/providers/health
    operator_key_ids: frozenset[str] = frozenset()
