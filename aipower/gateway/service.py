"""Gateway.complete() / Gateway.open_stream(): plan -> check -> reserve -> call with failover -> settle. Domain layer.

Settlement always runs, shielded from cancellation and awaited, whatever ends the call: success, an upstream
error, a timeout or a caller that went away. A failed call is charged nothing; a stream cut short is charged
for what was generated (reported usage, else an estimate marked as such).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace

from aipower.catalog import BillingRules, ModelSpec, Target
from aipower.errors import GatewayError, UpstreamError
from aipower.gateway import billing, tokens
from aipower.gateway.protocols import Caller, Hold, HoldRequest, Ledger, LogEntry, RequestLog, Settlement, Upstream
from aipower.gateway.routing import Deployments, plan
from aipower.gateway.stream_meter import StreamMeter
from aipower.messages import ChatRequest, ChatResponse, StreamEvent, Usage, UsageReport, message_text
from aipower.money import usd_to_nanos

logger = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's code for "client closed the connection": logged, never sent


@dataclass(frozen=True, slots=True)
class Completion:
    model: ModelSpec
    response: ChatResponse
    usage: Usage
    cost_nanos: int


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
    hold: Hold | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int
    code: str | None
    usage: Usage | None


class Gateway:
    def __init__(
        self,
        deployments: Deployments,
        upstream: Upstream,
        request_log: RequestLog,
        ledger: Ledger,
        rules: BillingRules,
    ) -> None:
        self._deployments = deployments
        self._upstream = upstream
        self._log = request_log
        self._ledger = ledger
        self._unlock_nanos = usd_to_nanos(rules.unlock_topup_usd)

    async def complete(self, caller: Caller, request: ChatRequest, request_id: str) -> Completion:
        call = _Call(caller, request, request_id)
        targets = await self._prepare(call)
        outcome = _Outcome(CLIENT_CLOSED, "client_closed", None)
        try:
            response = await self._call(call, targets)
            usage = response.usage or _estimate_usage(request, response)
            outcome = _Outcome(200, None, usage)
        except GatewayError as exc:
            outcome = _Outcome(exc.status, exc.code, None)
            raise
        finally:
            charged = await self._settle(call, outcome)
        assert call.target is not None
        return Completion(model=call.target.model, response=response, usage=usage, cost_nanos=charged)

    async def open_stream(self, caller: Caller, request: ChatRequest, request_id: str) -> StreamSession:
        """Start a stream, failing over until the first event arrives; errors before it are raised here."""
        call = _Call(caller, request, request_id)
        targets = await self._prepare(call)
        try:
            events, first = await self._open(call, targets)
        except GatewayError as exc:
            await self._settle(call, _Outcome(exc.status, exc.code, None))
            raise
        except asyncio.CancelledError:
            await self._settle(call, _Outcome(CLIENT_CLOSED, "client_closed", None))
            raise
        assert call.target is not None
        return StreamSession(model=call.target.model, events=self._relay(call, first, events))

    async def _prepare(self, call: _Call) -> list[Target]:
        """Plan, check the key, and reserve; failures here are logged without a hold."""
        try:
            targets = plan(call.request.model, self._deployments)
            models = [t.model for t in targets]
            billing.check_key(call.caller, [m.id for m in models], dt.datetime.now(dt.UTC))
            call.hold = await self._ledger.reserve(
                HoldRequest(
                    user_id=call.caller.user_id,
                    key_id=call.caller.key_id,
                    request_id=call.request_id,
                    amount=billing.hold_amount(call.request, models),
                    trial_eligible=all(m.free for m in models),
                    unlock_nanos=None if all(m.free for m in models) else self._unlock_nanos,
                )
            )
        except GatewayError as exc:
            self._log.add(self._entry(call, _Outcome(exc.status, exc.code, None), 0))
            raise
        return targets

    async def _call(self, call: _Call, targets: list[Target]) -> ChatResponse:
        for call.attempts, call.target in enumerate(targets, 1):
            try:
                return await self._upstream.complete(call.target, call.request)
            except UpstreamError as exc:
                if not (exc.retryable and call.attempts < len(targets)):
                    raise
        raise AssertionError("plan() returns at least one target")

    async def _open(
        self, call: _Call, targets: list[Target]
    ) -> tuple[AsyncGenerator[StreamEvent, None], StreamEvent | None]:
        for call.attempts, call.target in enumerate(targets, 1):
            events = self._upstream.stream(call.target, call.request)
            try:
                return events, await anext(events, None)
            except UpstreamError as exc:
                await events.aclose()
                if not (exc.retryable and call.attempts < len(targets)):
                    raise
        raise AssertionError("plan() returns at least one target")

    async def _relay(
        self, call: _Call, first: StreamEvent | None, events: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[StreamEvent, None]:
        meter = StreamMeter()
        outcome = _Outcome(CLIENT_CLOSED, "client_closed", None)
        try:
            if first is not None:
                yield self._priced(call, meter.see(first))
                async for event in events:
                    yield self._priced(call, meter.see(event))
            if call.request.include_usage and not meter.reported:
                # The upstream sent no usage: the caller still gets the usage chunk it asked for (an estimate).
                yield self._priced(call, UsageReport(meter.usage(call.request)))
            outcome = _Outcome(200, None, None)
        except GatewayError as exc:
            outcome = _Outcome(exc.status, exc.code, None)
            raise
        finally:
            await events.aclose()
            await self._settle(call, replace(outcome, usage=meter.usage(call.request)))

    def _priced(self, call: _Call, event: StreamEvent) -> StreamEvent:
        if isinstance(event, UsageReport):
            return replace(event, cost_nanos=self._cost(call, event.usage))
        return event

    def _cost(self, call: _Call, usage: Usage) -> int:
        assert call.hold is not None and call.target is not None
        return 0 if call.hold.mode == "trial" else billing.charge(usage, call.target.model)

    async def _settle(self, call: _Call, outcome: _Outcome) -> int:
        assert call.hold is not None
        usage = outcome.usage
        cost = self._cost(call, usage) if usage is not None and call.target is not None else 0
        settlement = Settlement(
            hold=call.hold,
            charge=cost,
            succeeded=outcome.status == 200 or (usage is not None and usage.output_tokens > 0),
            entry=self._entry(call, outcome, cost),
        )
        charged = await asyncio.shield(self._ledger.settle(settlement))
        self._access_log(settlement.entry)
        return charged

    def _entry(self, call: _Call, outcome: _Outcome, cost: int) -> LogEntry:
        target = call.target
        used = outcome.usage or Usage(0, 0)
        return LogEntry(
            request_id=call.request_id,
            key_id=call.caller.key_id,
            user_id=call.caller.user_id,
            model=target.model.id if target else call.request.model,
            provider=target.provider.id if target else None,
            stream=call.request.stream,
            status=outcome.status,
            error_code=outcome.code,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
            cached_tokens=used.cached_input_tokens,
            reasoning_tokens=used.reasoning_tokens,
            latency_ms=int((time.perf_counter() - call.started) * 1000),
            attempts=call.attempts,
            created_at=dt.datetime.now(dt.UTC),
            cost_nanos=cost,
            billing_mode=call.hold.mode if call.hold else None,
            estimated=used.estimated,
        )

    def _access_log(self, e: LogEntry) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "request_id=%s key_id=%s model=%s provider=%s attempts=%d status=%d tokens=%d/%d cost_nanos=%d "
                "latency_ms=%d",
                e.request_id, e.key_id, e.model, e.provider, e.attempts, e.status,
                e.input_tokens, e.output_tokens, e.cost_nanos, e.latency_ms,
            )  # fmt: skip


def _estimate_usage(request: ChatRequest, response: ChatResponse) -> Usage:
    output = sum(tokens.estimate_text(message_text(c.message)) for c in response.choices)
    return Usage(tokens.estimate_prompt(request), output, estimated=True)
