"""Gateway.complete() / Gateway.open_stream(): plan -> call with failover -> account -> log. Domain layer."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from aipower.catalog import ModelSpec, Target
from aipower.errors import GatewayError, UpstreamError
from aipower.gateway import tokens
from aipower.gateway.protocols import Caller, LogEntry, RequestLog, Upstream
from aipower.gateway.routing import Deployments, plan
from aipower.messages import (
    ChatRequest,
    ChatResponse,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
    message_text,
)

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's code for "client closed the connection": logged, never sent


@dataclass(frozen=True, slots=True)
class Completion:
    model: ModelSpec
    response: ChatResponse
    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamSession:
    model: ModelSpec
    events: AsyncGenerator[StreamEvent, None]


@dataclass(slots=True)
class _Call:
    """The bookkeeping of one request while it runs."""

    caller: Caller
    request: ChatRequest
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    target: Target | None = None
    attempts: int = 0


class Gateway:
    def __init__(self, deployments: Deployments, upstream: Upstream, request_log: RequestLog) -> None:
        self._deployments = deployments
        self._upstream = upstream
        self._log = request_log

    async def complete(self, caller: Caller, request: ChatRequest, request_id: str) -> Completion:
        call = _Call(caller, request, request_id)
        try:
            targets = plan(request.model, self._deployments)
            for call.attempts, call.target in enumerate(targets, 1):
                try:
                    response = await self._upstream.complete(call.target, request)
                except UpstreamError as exc:
                    if exc.retryable and call.attempts < len(targets):
                        continue
                    raise
                usage = response.usage or _estimate_usage(request, response)
                self._record(call, 200, None, usage)
                return Completion(model=call.target.model, response=response, usage=usage)
        except GatewayError as exc:
            self._record(call, exc.status, exc.code, None)
            raise
        raise AssertionError("plan() returns at least one target")

    async def open_stream(self, caller: Caller, request: ChatRequest, request_id: str) -> StreamSession:
        """Start a stream, failing over until the first event arrives; errors before it are raised here."""
        call = _Call(caller, request, request_id)
        try:
            targets = plan(request.model, self._deployments)
            for call.attempts, call.target in enumerate(targets, 1):
                events = self._upstream.stream(call.target, request)
                try:
                    first = await anext(events, None)
                except UpstreamError as exc:
                    await events.aclose()
                    if exc.retryable and call.attempts < len(targets):
                        continue
                    raise
                return StreamSession(model=call.target.model, events=self._relay(call, first, events))
        except GatewayError as exc:
            self._record(call, exc.status, exc.code, None)
            raise
        raise AssertionError("plan() returns at least one target")

    async def _relay(
        self, call: _Call, first: StreamEvent | None, events: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[StreamEvent, None]:
        meter = _StreamMeter()
        status: int = CLIENT_CLOSED
        code: str | None = "client_closed"
        try:
            if first is not None:
                meter.see(first)
                yield first
                async for event in events:
                    meter.see(event)
                    yield event
            status, code = 200, None
        except GatewayError as exc:
            status, code = exc.status, exc.code
            raise
        finally:
            await events.aclose()
            self._record(call, status, code, meter.usage(call.request))

    def _record(self, call: _Call, status: int, code: str | None, usage: Usage | None) -> None:
        target = call.target
        latency_ms = int((time.perf_counter() - call.started) * 1000)
        used = usage or Usage(0, 0)
        self._log.add(
            LogEntry(
                request_id=call.request_id,
                key_id=call.caller.key_id,
                user_id=call.caller.user_id,
                model=target.model.id if target else call.request.model,
                provider=target.provider.id if target else None,
                stream=call.request.stream,
                status=status,
                error_code=code,
                input_tokens=used.input_tokens,
                output_tokens=used.output_tokens,
                cached_tokens=used.cached_input_tokens,
                reasoning_tokens=used.reasoning_tokens,
                latency_ms=latency_ms,
                attempts=call.attempts,
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        logger.info(
            "request_id=%s key_id=%s model=%s provider=%s attempts=%d status=%d tokens=%d/%d latency_ms=%d",
            call.request_id,
            call.caller.key_id,
            target.model.id if target else call.request.model,
            target.provider.id if target else "-",
            call.attempts,
            status,
            used.input_tokens,
            used.output_tokens,
            latency_ms,
        )


class _StreamMeter:
    """Counts what a stream produced, for usage when the upstream reports none."""

    __slots__ = ("_chars", "_reported")

    def __init__(self) -> None:
        self._chars = 0
        self._reported: Usage | None = None

    def see(self, event: StreamEvent) -> None:
        match event:
            case TextDelta(text=text) | ReasoningDelta(text=text):
                self._chars += len(text)
            case ToolCallDelta(arguments_fragment=fragment, name=name):
                self._chars += len(fragment) + len(name or "")
            case UsageReport(usage=usage):
                self._reported = usage
            case _:
                pass

    def usage(self, request: ChatRequest) -> Usage:
        if self._reported is not None:
            return self._reported
        output = -(-self._chars // 4)
        return Usage(tokens.estimate_prompt(request), output, estimated=True)


def _estimate_usage(request: ChatRequest, response: ChatResponse) -> Usage:
    output = sum(tokens.estimate_text(message_text(c.message)) for c in response.choices)
    return Usage(tokens.estimate_prompt(request), output, estimated=True)
