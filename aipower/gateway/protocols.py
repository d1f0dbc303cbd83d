"""What the domain needs from outside (keys, ledger, request log, upstream) and the records that cross. Domain layer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

from aipower.catalog import Target
from aipower.messages import ChatRequest, ChatResponse, StreamEvent


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: resolved from an API key."""

    key_id: str
    user_id: int
    revoked: bool = False
    expires_at: dt.datetime | None = None
    allowed_models: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    request_id: str
    key_id: str
    user_id: int
    model: str
    provider: str | None
    stream: bool
    status: int
    error_code: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    latency_ms: int
    attempts: int
    created_at: dt.datetime
    cost_nanos: int = 0
    billing_mode: str | None = None
    estimated: bool = False


BillingMode = Literal["balance", "trial"]


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Reserve `amount` for one call, or use a trial call when `trial_eligible` and some are left."""

    user_id: int
    key_id: str
    request_id: str
    amount: int
    trial_eligible: bool
    unlock_nanos: int | None  # premium model: lifetime top-ups needed; None for free-tier models


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    user_id: int
    key_id: str
    amount: int
    mode: BillingMode
    day: str  # the UTC day whose spend the hold counts against


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a call ended: `charge` nanos owed (0 for a failed call), and its log row."""

    hold: Hold
    charge: int
    succeeded: bool
    entry: LogEntry


class KeyStore(Protocol):
    async def find(self, digest: str) -> Caller | None: ...


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: int
    balance_nanos: int
    held_nanos: int
    lifetime_topup_nanos: int
    trial_calls_left: int
    daily_cap_nanos: int | None
    spent_today_nanos: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: str  # a model id or a UTC day (YYYY-MM-DD)
    calls: int
    input_tokens: int
    output_tokens: int
    cost_nanos: int


class AccountReader(Protocol):
    async def balance(self, user_id: int) -> Balance: ...

    async def usage(
        self, user_id: int, start: dt.datetime, end: dt.datetime, group_by: Literal["model", "day"]
    ) -> list[UsageRow]: ...

    async def generation(self, user_id: int, request_id: str) -> LogEntry | None: ...


class Ledger(Protocol):
    async def reserve(self, request: HoldRequest) -> Hold:
        """Atomically hold money (or a trial call); raises InsufficientCredit / PermissionDenied."""

    async def settle(self, settlement: Settlement) -> int:
        """Replace the hold by the charge, exactly once; returns the nanos actually charged."""


class RequestLog(Protocol):
    def add(self, entry: LogEntry) -> None:
        """Record one call; may buffer, never blocks the request."""


class Upstream(Protocol):
    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse: ...

    def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]: ...
