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
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

from aipower.catalog import BillingRules, ModelSpec, Target
from aipower.errors import GatewayError, UpstreamError
from aipower.gateway import billing, tokens
from aipower.gateway.admission import Admission, Ticket, rate_headers
from aipower.gateway.protocols import Caller, Hold, HoldRequest, Ledger, LogEntry, RequestLog, Settlement, Upstream
from aipower.gateway.routing import Deployments, Plan, Router
from aipower.gateway.stream_meter import StreamMeter
from aipower.messages import ChatRequest, ChatResponse, StreamEvent, Usage, UsageReport, for_model, message_text
from aipower.money import usd_to_nanos

logger = logging.getLogger(__name__)
R = TypeVar("R")
CLIENT_CLOSED = 499  # nginx's code for "client closed the connection": logged, never sent


@dataclass(frozen=True, slots=True)
class Completion:
    model: ModelSpec
    response: ChatResponse
    usage: Usage
    cost_nanos: int
    rate_headers: Mapping[str, str] = field(default_factory=dict)
    route: str | None = None  # x-aipower-route: why this model (smart routes, failover)


@dataclass(frozen=True, slots=True)
class StreamSession:
    """An open stream. Whoever serves it calls `close()` when done, however it ends: that settles the call even if
    `events` was never read (an async generator that never started runs no `finally`)."""

    model: ModelSpec
    events: AsyncGenerator[StreamEvent, None]
    close: Callable[[], Awaitable[None]]
    rate_headers: Mapping[str, str] = field(default_factory=dict)
    route: str | None = None


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
    ticket: Ticket | None = None
    plan: Plan | None = None
    first_at: float = 0.0  # the router's clock when the stream's first event arrived
    settled: bool = False

    @property
    def route(self) -> str | None:
        return self.plan.describe(self.target.model.id) if self.plan and self.target else None

    @property
    def rate_headers(self) -> dict[str, str]:
        return rate_headers(self.ticket.requests, self.ticket.tokens) if self.ticket else {}


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
        *,
        admission: Admission,
        router: Router | None = None,
    ) -> None:
        self._router = router or Router(deployments)
        self._deployments = deployments
        self._upstream = upstream
        self._log = request_log
        self._ledger = ledger
        self._admission = admission
        self._unlock_nanos = usd_to_nanos(rules.unlock_topup_usd)

    async def complete(self, caller: Caller, request: ChatRequest, request_id: str) -> Completion:
        call = _Call(caller, request, request_id)
        targets = await self._prepare(call)
        outcome = _Outcome(CLIENT_CLOSED, "client_closed", None)
        try:
            response = await self._call(call, targets)
            usage = response.usage or _estimate_usage(request, response)
            outcome = _Outcome(200, None, usage)
        except BaseException as exc:
            outcome = _failed(exc)
            raise
        finally:
            charged = await self._settle(call, outcome)
        assert call.target is not None
        return Completion(
            model=call.target.model,
            response=response,
            usage=usage,
            cost_nanos=charged,
            rate_headers=call.rate_headers,
            route=call.route,
        )

    async def open_stream(self, caller: Caller, request: ChatRequest, request_id: str) -> StreamSession:
        """Start a stream, failing over until the first event arrives; errors before it are raised here."""
        call = _Call(caller, request, request_id)
        targets = await self._prepare(call)
        try:
            events, first = await self._open(call, targets)
        except BaseException as exc:  # whatever ends the call before its first event, the hold is settled
            await self._settle(call, _failed(exc))
            raise
        assert call.target is not None
        relay = self._relay(call, first, events)
        return StreamSession(
            model=call.target.model,
            events=relay,
            close=partial(self._close_stream, call, relay, events),
            rate_headers=call.rate_headers,
            route=call.route,
        )

    async def _close_stream(
        self, call: _Call, relay: AsyncGenerator[StreamEvent, None], events: AsyncGenerator[StreamEvent, None]
    ) -> None:
        """Close the relay (a started one settles in its `finally`); one never started settles here, as cut by its
        caller before the first event: charged the prompt's estimate, as a stream cut later would be."""
        try:
            await relay.aclose()
        finally:
            if not call.settled:
                try:
                    await events.aclose()
                finally:
                    unread = StreamMeter().usage(call.request)
                    await self._settle(call, _Outcome(CLIENT_CLOSED, "client_closed", unread))

    async def _prepare(self, call: _Call) -> list[Target]:
        """Plan, check the key, and reserve; failures here are logged without a hold."""
        try:
            call.plan = await self._plan(call.caller, call.request)
            targets = call.plan.targets
            models = [t.model for t in targets]
            billing.check_key(call.caller, [m.id for m in models], dt.datetime.now(dt.UTC))
            tokens_wanted = tokens.estimate_prompt_upper(call.request) + (call.request.max_tokens or 0)
            call.ticket = await self._admission.admit(call.caller, models, tokens_wanted)
            call.hold = await self._reserve(call, models)
        except GatewayError as exc:
            self._log.add(self._entry(call, _Outcome(exc.status, exc.code, None), 0))
            raise
        return targets

    async def _plan(self, caller: Caller, request: ChatRequest) -> Plan:
        """Smart routes choose only what the caller may use: the demo models for the demo key (whose calls are
        free), free models for a user whose top-ups are below the premium unlock."""
        if caller.is_demo:
            return await self._router.plan(request, caller, demo_models=self._admission.demo_models)
        topups = caller.lifetime_topup_nanos
        free_only = topups is not None and topups < self._unlock_nanos
        return await self._router.plan(request, caller, free_only=free_only)

    async def _reserve(self, call: _Call, models: list[ModelSpec]) -> Hold:
        assert call.ticket is not None
        free = all(m.free for m in models)
        try:
            return await self._ledger.reserve(
                HoldRequest(
                    user_id=call.caller.user_id,
                    key_id=call.caller.key_id,
                    request_id=call.request_id,
                    amount=billing.hold_amount(call.request, models),
                    trial_eligible=free,
                    unlock_nanos=None if free else self._unlock_nanos,
                    demo=call.caller.is_demo,
                    budget=(call.caller.spend_limit_nanos, call.caller.daily_cap_nanos),
                )
            )
        except BaseException:
            await asyncio.shield(self._admission.finish(call.ticket, 0))
            raise

    async def _call(self, call: _Call, targets: list[Target]) -> ChatResponse:
        async def attempt(target: Target) -> ChatResponse:
            began = self._router.clock()
            response = await self._upstream.complete(target, for_model(call.request, target.model.id))
            await self._router.succeeded(target, began, response.usage)
            return response

        return await self._failover(call, targets, attempt)

    async def _open(
        self, call: _Call, targets: list[Target]
    ) -> tuple[AsyncGenerator[StreamEvent, None], StreamEvent | None]:
        async def attempt(target: Target) -> tuple[AsyncGenerator[StreamEvent, None], StreamEvent | None]:
            began = self._router.clock()
            events = self._upstream.stream(target, for_model(call.request, target.model.id))
            try:
                first = await anext(events, None)
            except UpstreamError:
                await events.aclose()
                raise
            call.first_at = self._router.clock()
            await self._router.succeeded(target, began, stream=True)
            return events, first

        return await self._failover(call, targets, attempt)

    async def _failover(self, call: _Call, targets: list[Target], attempt: Callable[[Target], Awaitable[R]]) -> R:
        """Try the targets in order (skipping open breakers) until one answers, a failure is not retryable, or
        the failover budget is spent; every attempt feeds the health store."""
        failure: UpstreamError | None = None
        deadline = self._router.deadline()
        for target in targets:
            if failure is not None and self._router.expired(deadline):
                break
            if not await self._router.admit(target):
                continue
            call.attempts, call.target = call.attempts + 1, target
            try:
                return await attempt(target)
            except UpstreamError as exc:
                await self._router.failed(target, exc)
                if not exc.retryable:
                    raise
                failure = exc
        raise failure or self._router.skipped(targets)

    async def _relay(
        self, call: _Call, first: StreamEvent | None, events: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[StreamEvent, None]:
        meter = StreamMeter()
        outcome = _Outcome(CLIENT_CLOSED, "client_closed", None)
        last = call.first_at
        try:
            if first is not None:
                yield self._priced(call, meter.see(first))
                async for event in events:
                    last = self._router.clock()
                    yield self._priced(call, meter.see(event))
            assert call.target is not None
            await self._router.streamed(call.target, call.first_at, last, meter.usage(call.request).output_tokens)
            if call.request.include_usage and not meter.reported:
                # The upstream sent no usage: the caller still gets the usage chunk it asked for (an estimate).
                yield self._priced(call, UsageReport(meter.usage(call.request)))
            outcome = _Outcome(200, None, None)
        except BaseException as exc:
            outcome = _failed(exc)
            if isinstance(exc, UpstreamError):
                meter.know(exc.usage_so_far)
            raise
        finally:
            try:
                await events.aclose()
            finally:  # settled even if closing the upstream fails
                await self._settle(call, replace(outcome, usage=meter.usage(call.request)))

    def _priced(self, call: _Call, event: StreamEvent) -> StreamEvent:
        if isinstance(event, UsageReport):
            return replace(event, cost_nanos=self._cost(call, event.usage))
        return event

    def _cost(self, call: _Call, usage: Usage) -> int:
        """What the caller is charged: list price on the balance; nothing on a trial or demo call."""
        assert call.hold is not None and call.target is not None
        return billing.charge(usage, call.target.model) if call.hold.mode == "balance" else 0

    async def _settle(self, call: _Call, outcome: _Outcome) -> int:
        assert call.hold is not None and call.ticket is not None
        call.settled = True
        usage = outcome.usage
        succeeded = outcome.status == 200 or (usage is not None and usage.output_tokens > 0)
        # A failed call costs nothing (a stream that failed before any text included); one its caller cut is charged
        # for what it used.
        chargeable = succeeded or outcome.status == CLIENT_CLOSED
        list_cost = 0
        if chargeable and usage is not None and call.target is not None:
            list_cost = billing.charge(usage, call.target.model)
        settlement = Settlement(
            hold=call.hold,
            charge=list_cost if call.hold.mode == "balance" else 0,
            succeeded=succeeded,
            entry=self._entry(call, outcome, list_cost),
        )
        charged = self._finish_now(call.ticket, settlement)
        if charged is None:
            charged = await asyncio.shield(self._finish(call.ticket, settlement))
        self._access_log(settlement.entry)
        return charged

    def _finish_now(self, ticket: Ticket, settlement: Settlement) -> int | None:
        """_finish() without a task or a pass of the loop, when both can be done right here (the ledger's write lock
        free on SQLite, the limits in this process): nothing is awaited, so nothing can interrupt it. None: neither
        was done."""
        if not self._admission.finishes_now:
            return None
        tokens = settlement.entry.output_tokens
        try:
            charged = self._ledger.settle_now(settlement)
        except BaseException:
            self._admission.finish_now(ticket, tokens)  # as _finish leaves it when the ledger fails
            raise
        if charged is not None:
            self._admission.finish_now(ticket, tokens)
        return charged

    async def _finish(self, ticket: Ticket, settlement: Settlement) -> int:
        """Settle and release the call's admission side by side (with Redis and PostgreSQL, two round trips at
        once); both are done before the caller hears the outcome."""
        releasing = asyncio.ensure_future(self._admission.finish(ticket, settlement.entry.output_tokens))
        try:
            return await self._ledger.settle(settlement)
        finally:
            await releasing

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


def _failed(exc: BaseException) -> _Outcome:
    """How a call that raised ended, for settlement and the log: nothing was delivered, nothing is charged."""
    if isinstance(exc, GatewayError):
        return _Outcome(exc.status, exc.code, None)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the caller went away
        return _Outcome(CLIENT_CLOSED, "client_closed", None)
    return _Outcome(500, "internal_error", None)
