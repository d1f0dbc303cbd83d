"""What the HTTP layer needs, built by app.py and kept on app.state. API layer."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aipower.api.auth import Authenticator
from aipower.api.models import ModelList
from aipower.gateway.protocols import AccountReader, ResponseStore
from aipower.gateway.routing import Router
from aipower.gateway.service import Gateway


class ResponseIds:
    """`chatcmpl-` ids: 64 random bits per process and a counter. A `secrets.token_hex` per request (one getrandom
    syscall) showed in the profile; the ids only need to be unique (generations are looked up per user)."""

    __slots__ = ("_prefix", "_serial")

    def __init__(self) -> None:
        self._prefix = "chatcmpl-" + secrets.token_hex(8)
        self._serial = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._serial):08x}"


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
    response_ids: ResponseIds = field(default_factory=ResponseIds)
