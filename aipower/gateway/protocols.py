"""What the domain needs from outside (keys, ledger, request log, upstream) and the records that cross. Domain layer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Collection, Mapping
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
    limits: Limits | None = None  # per-key / per-user overrides of the default rate limits
    is_demo: bool = False  # the public demo key
    client_ip: str | None = None  # the demo key's caller's address, set per request by the API layer
    lifetime_topup_nanos: int | None = None  # the user's top-ups so far (None: unknown, routing does not narrow)
    spend_limit_nanos: int | None = None  # the key's spend limit (None: none), as the key lookup read it
    daily_cap_nanos: int | None = None  # the user's daily cap (None: none), as the key lookup read it


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate-limit overrides (None = the configured default; 0 = unlimited)."""

    key_rpm: int | None = None
    key_tpm: int | None = None
    user_rpm: int | None = None
    user_tpm: int | None = None


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
    cost_nanos: int = 0  # at list price, whatever the caller was charged (trial and demo calls included)
    billing_mode: str | None = None
    estimated: bool = False
    charged_nanos: int = 0  # what the caller paid (set by the ledger when it settles)


BillingMode = Literal["balance", "trial", "demo"]


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Reserve `amount` for one call, or use a trial call when `trial_eligible` and some are left."""

    user_id: int
    key_id: str
    request_id: str
    amount: int
    trial_eligible: bool
    unlock_nanos: int | None  # premium model: lifetime top-ups needed; None for free-tier models
    demo: bool = False  # the public demo key: free to the caller, recorded against the demo account
    # The key's spend limit and the user's daily cap as the caller's key lookup read them: a spare hold (storage.
    # ledger_spares) serves only a call that saw the same ones as the call whose settle took it.
    budget: tuple[int | None, int | None] = (None, None)


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

    def settle_now(self, settlement: Settlement) -> int | None:
        """settle(), committed right here if the ledger can do it without waiting; None: nothing was done."""


class RequestLog(Protocol):
    def add(self, entry: LogEntry) -> None:
        """Record one call; may buffer, never blocks the request."""


class Upstream(Protocol):
    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse: ...

    def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]: ...


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One /v1/responses answer kept for GET, input_items and previous_response_id; the JSON is opaque wire text."""

    id: str
    user_id: int
    key_id: str
    model: str
    status: str
    created_at: dt.datetime
    previous_response_id: str | None
    input_items_json: bytes  # the request's input items, each with its id
    output_items_json: bytes
    usage_json: bytes | None
    details_json: bytes  # every other field of the response object (instructions, metadata, tools, ...)


class ResponseStore(Protocol):
    async def save(self, response: StoredResponse) -> None: ...

    async def find(self, user_id: int, response_id: str) -> StoredResponse | None:
        """The user's response, or None (another user's id is None too)."""

    async def chain(self, user_id: int, response_id: str) -> list[StoredResponse]:
        """The response and its stored ancestors, oldest first; empty when the response is not the user's."""

    async def delete(self, user_id: int, response_id: str) -> bool: ...


BreakerState = Literal["closed", "open", "half-open"]


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment's circuit breaker and measured latency, as the health store sees it now."""

    deployment: str
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    calls: int = 0
    failures: int = 0
    error_rate: float = 0.0  # moving average of failed calls (0..1)
    ttft_ms: float | None = None  # moving average of time to first token (a whole answer when not streamed)
    tokens_per_s: float | None = None  # moving average of output tokens per second
    retry_in: float | None = None  # open: seconds until a probe is let through


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one upstream attempt went; `ok=False` is a retryable failure, the kind that trips a breaker."""

    deployment: str
    ok: bool
    ttft: float | None = None  # seconds
    tokens_per_s: float | None = None


class HealthStore(Protocol):
    """Circuit-breaker state and latency per deployment: in memory (one process) or Redis (shared)."""

    async def read(self, deployments: Collection[str]) -> Mapping[str, DeploymentHealth]: ...

    async def admit(self, deployment: str) -> bool:
        """May a call go there now? False while open; claims the one probe of a half-open breaker."""

    async def record(self, outcome: CallOutcome) -> None: ...

    async def record_speed(self, deployment: str, tokens_per_s: float) -> None:
        """A stream's generation rate, measured when it ended (its attempt was already recorded)."""
