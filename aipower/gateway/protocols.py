"""What the domain needs from outside (key store, request log, upstream) and the records that cross. Domain layer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from aipower.catalog import Target
from aipower.messages import ChatRequest, ChatResponse, StreamEvent


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: resolved from an API key."""

    key_id: str
    user_id: int
    revoked: bool = False


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


class KeyStore(Protocol):
    async def find(self, digest: str) -> Caller | None: ...


class RequestLog(Protocol):
    def add(self, entry: LogEntry) -> None:
        """Record one call; may buffer, never blocks the request."""


class Upstream(Protocol):
    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse: ...

    def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]: ...
