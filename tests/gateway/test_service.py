"""aipower/gateway/service.py: failover, streaming rules, usage estimates and one log entry per call.

The upstream, ledger and request log are small in-memory fakes written here (they implement the gateway's
protocols; nothing of ours is mocked).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from aipower.catalog import Catalog, Target, load
from aipower.errors import GatewayError, ModelNotFound, UpstreamError, UpstreamUnavailable
from aipower.gateway.admission import Admission, LimitPolicy
from aipower.gateway.deployments import resolve
from aipower.gateway.limits import Check, LocalLimiter
from aipower.gateway.protocols import Caller, Hold, HoldRequest, LogEntry, Settlement
from aipower.gateway.service import CLIENT_CLOSED, Gateway
from aipower.messages import (
    ChatRequest,
    ChatResponse,
    Choice,
    Finish,
    Message,
    StreamEvent,
    Text,
    TextDelta,
    Usage,
    UsageReport,
)
from aipower.money import cost

CALLER = Caller(key_id="key_test", user_id=7)
ZHIPU, DOUBAO, DEEPSEEK = "zhipu/glm-4-flash", "doubao/doubao-pro-256k", "deepseek/deepseek-chat"
ROUTE = "auto-free"  # cheapest first: zhipu/glm-4-flash, then doubao/doubao-pro-256k (the others have no key)


def failure(status: int, retryable: bool) -> UpstreamError:
    return UpstreamError(f"upstream said {status}", status=status, type="x", code=f"code_{status}", retryable=retryable)


def answer(text: str, usage: Usage | None) -> ChatResponse:
    message = Message(role="assistant", parts=(Text(text),))
    return ChatResponse(choices=(Choice(index=0, message=message, finish_reason="stop"),), usage=usage)


@dataclass
class Script:
    """What the fake upstream does for one model: answer, or stream events and then maybe fail."""

    response: ChatResponse | None = None
    events: tuple[StreamEvent, ...] = ()
    error: Exception | None = None


@dataclass
class FakeUpstream:
    scripts: dict[str, Script]
    calls: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # streams whose generator was finalised
    finished: list[str] = field(default_factory=list)  # streams that ran to their end

    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse:
        self.calls.append(target.model.id)
        script = self.scripts[target.model.id]
        if script.error is not None:
            raise script.error
        assert script.response is not None
        return script.response

    async def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        model_id = target.model.id
        self.calls.append(model_id)
        script = self.scripts[model_id]
        try:
            for event in script.events:
                yield event
            if script.error is not None:
                raise script.error
            self.finished.append(model_id)
        finally:
            self.closed.append(model_id)


@dataclass
class MemoryLog:
    entries: list[LogEntry] = field(default_factory=list)

    def add(self, entry: LogEntry) -> None:
        self.entries.append(entry)


@dataclass
class MemoryLedger:
    holds: list[HoldRequest] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)

    async def reserve(self, request: HoldRequest) -> Hold:
        self.holds.append(request)
        return Hold(f"hold_{len(self.holds)}", request.user_id, request.key_id, request.amount, "balance", "2026-01-01")

    async def settle(self, settlement: Settlement) -> int:
        self.settlements.append(settlement)
        return settlement.charge

    def settle_now(self, settlement: Settlement) -> int | None:
        return None  # always through settle(), whose waits the cancellation tests rely on


@dataclass
class Rig:
    gateway: Gateway
    upstream: FakeUpstream
    log: MemoryLog
    ledger: MemoryLedger

    def entries(self) -> list[LogEntry]:
        """Every call's log entry, whether it went through the ledger's settlement or straight to the log."""
        return self.log.entries + [s.entry for s in self.ledger.settlements]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def rig(catalog: Catalog, scripts: dict[str, Script]) -> Rig:
    env = {"ZHIPU_API_KEY": "k1", "DOUBAO_API_KEY": "k2", "DEEPSEEK_API_KEY": "k3"}
    upstream, log, ledger = FakeUpstream(scripts), MemoryLog(), MemoryLedger()
    admission = Admission(LocalLimiter(), LimitPolicy())
    gateway = Gateway(resolve(catalog, env, {"openai"}), upstream, log, ledger, catalog.billing, admission=admission)
    return Rig(gateway, upstream, log, ledger)


def request(model: str, stream: bool = False) -> ChatRequest:
    # "hello world!" is 12 characters: 3 estimated tokens, plus 4 for the message.
    return ChatRequest(model=model, messages=(Message(role="user", parts=(Text("hello world!"),)),), stream=stream)


# ---------------------------------------------------------------- complete


async def test_complete_returns_the_answer_and_logs_it(catalog: Catalog) -> None:
    usage = Usage(120, 30, cached_input_tokens=20, reasoning_tokens=5)
    r = rig(catalog, {DEEPSEEK: Script(response=answer("hi", usage))})
    done = await r.gateway.complete(CALLER, request(DEEPSEEK), "req-1")
    assert done.model.id == DEEPSEEK
    assert done.usage == usage
    assert done.cost_nanos == cost(120, 30, catalog.models[DEEPSEEK].price)
    [entry] = r.entries()
    assert (entry.request_id, entry.key_id, entry.user_id) == ("req-1", "key_test", 7)
    assert (entry.model, entry.provider, entry.stream) == (DEEPSEEK, "deepseek", False)
    assert (entry.status, entry.error_code, entry.attempts) == (200, None, 1)
    assert (entry.input_tokens, entry.output_tokens, entry.cached_tokens, entry.reasoning_tokens) == (120, 30, 20, 5)


async def test_complete_fails_over_on_a_retryable_error(catalog: Catalog) -> None:
    r = rig(catalog, {ZHIPU: Script(error=failure(503, True)), DOUBAO: Script(response=answer("ok", Usage(5, 1)))})
    done = await r.gateway.complete(CALLER, request(ROUTE), "req-2")
    assert done.model.id == DOUBAO
    assert r.upstream.calls == [ZHIPU, DOUBAO]
    [entry] = r.entries()
    assert (entry.status, entry.attempts, entry.model, entry.provider) == (200, 2, DOUBAO, "doubao")


async def test_complete_does_not_fail_over_on_a_non_retryable_error(catalog: Catalog) -> None:
    r = rig(catalog, {ZHIPU: Script(error=failure(400, False)), DOUBAO: Script(response=answer("ok", Usage(5, 1)))})
    with pytest.raises(UpstreamError) as raised:
        await r.gateway.complete(CALLER, request(ROUTE), "req-3")
    assert raised.value.status == 400
    assert r.upstream.calls == [ZHIPU]
    [entry] = r.entries()
    assert (entry.status, entry.error_code, entry.attempts, entry.provider) == (400, "code_400", 1, "zhipu")
    assert (entry.input_tokens, entry.output_tokens, entry.cost_nanos) == (0, 0, 0)


async def test_complete_raises_the_last_retryable_error(catalog: Catalog) -> None:
    r = rig(catalog, {ZHIPU: Script(error=failure(503, True)), DOUBAO: Script(error=failure(429, True))})
    with pytest.raises(UpstreamError) as raised:
        await r.gateway.complete(CALLER, request(ROUTE), "req-4")
    assert raised.value.status == 429
    assert r.upstream.calls == [ZHIPU, DOUBAO]
    [entry] = r.entries()
    assert (entry.status, entry.attempts) == (429, 2)


async def test_complete_estimates_usage_the_upstream_did_not_report(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(response=answer("abcdefghi", None))})
    done = await r.gateway.complete(CALLER, request(DEEPSEEK), "req-5")
    assert done.usage == Usage(7, 3, estimated=True)  # prompt 4 + 3; 9 characters of answer -> 3 tokens
    [entry] = r.entries()
    assert (entry.input_tokens, entry.output_tokens, entry.estimated) == (7, 3, True)


async def test_an_unknown_model_is_logged_without_any_upstream_call(catalog: Catalog) -> None:
    r = rig(catalog, {})
    with pytest.raises(ModelNotFound):
        await r.gateway.complete(CALLER, request("nope/model"), "req-6")
    assert r.upstream.calls == []
    [entry] = r.entries()
    assert (entry.status, entry.error_code, entry.attempts, entry.provider) == (404, "model_not_found", 0, None)
    assert entry.model == "nope/model"


async def test_an_unconfigured_model_is_503_and_logged(catalog: Catalog) -> None:
    r = rig(catalog, {})
    with pytest.raises(GatewayError) as raised:
        await r.gateway.complete(CALLER, request("qwen/qwen-plus"), "req-7")
    assert (raised.value.status, raised.value.code) == (503, "provider_not_configured")
    assert [e.status for e in r.entries()] == [503]


# ---------------------------------------------------------------- streams


async def collect(events: AsyncGenerator[StreamEvent, None]) -> list[StreamEvent]:
    return [event async for event in events]


STREAM = (TextDelta(0, "Hel"), TextDelta(0, "lo"), Finish(0, "stop"), UsageReport(Usage(11, 2)))


async def test_a_stream_is_relayed_and_logged(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=STREAM)})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-10")
    assert session.model.id == DEEPSEEK
    events = await collect(session.events)
    assert events[:3] == list(STREAM[:3])
    report = events[3]
    assert isinstance(report, UsageReport) and report.usage == Usage(11, 2)
    assert report.cost_nanos == cost(11, 2, catalog.models[DEEPSEEK].price)
    [entry] = r.entries()
    assert (entry.status, entry.stream, entry.input_tokens, entry.output_tokens, entry.attempts) == (
        200,
        True,
        11,
        2,
        1,
    )
    assert r.upstream.finished == [DEEPSEEK] and r.upstream.closed == [DEEPSEEK]


async def test_a_stream_fails_over_before_the_first_event(catalog: Catalog) -> None:
    r = rig(catalog, {ZHIPU: Script(error=failure(503, True)), DOUBAO: Script(events=STREAM)})
    session = await r.gateway.open_stream(CALLER, request(ROUTE, stream=True), "req-11")
    assert session.model.id == DOUBAO
    assert [type(e) for e in await collect(session.events)] == [TextDelta, TextDelta, Finish, UsageReport]
    assert r.upstream.calls == [ZHIPU, DOUBAO]
    assert r.upstream.closed == [ZHIPU, DOUBAO]  # the failed attempt was closed too
    [entry] = r.entries()
    assert (entry.status, entry.attempts, entry.provider) == (200, 2, "doubao")


async def test_a_non_retryable_error_before_the_first_event_is_raised_by_open_stream(catalog: Catalog) -> None:
    r = rig(catalog, {ZHIPU: Script(error=failure(401, False)), DOUBAO: Script(events=STREAM)})
    with pytest.raises(UpstreamError):
        await r.gateway.open_stream(CALLER, request(ROUTE, stream=True), "req-12")
    assert r.upstream.calls == [ZHIPU]
    [entry] = r.entries()
    assert (entry.status, entry.attempts) == (401, 1)


async def test_no_failover_after_the_first_event(catalog: Catalog) -> None:
    scripts = {
        ZHIPU: Script(events=(TextDelta(0, "partial"),), error=failure(503, True)),
        DOUBAO: Script(events=STREAM),
    }
    r = rig(catalog, scripts)
    session = await r.gateway.open_stream(CALLER, request(ROUTE, stream=True), "req-13")
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as raised:
        async for event in session.events:
            received.append(event)
    assert received == [TextDelta(0, "partial")]
    assert raised.value.status == 503
    assert r.upstream.calls == [ZHIPU]  # the second candidate is never tried
    [entry] = r.entries()
    assert (entry.status, entry.error_code, entry.attempts, entry.provider) == (503, "code_503", 1, "zhipu")
    assert entry.output_tokens == 2  # "partial": 7 characters, estimated
    assert entry.estimated is True


async def test_a_stream_without_usage_is_estimated(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=(TextDelta(0, "abcdefghi"), Finish(0, "stop")))})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-14")
    assert not any(isinstance(e, UsageReport) for e in await collect(session.events))
    [entry] = r.entries()
    assert (entry.status, entry.input_tokens, entry.output_tokens, entry.estimated) == (200, 7, 3, True)


async def test_a_caller_that_stops_reading_is_logged_as_499_and_closes_the_upstream(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=STREAM)})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-15")
    assert await anext(session.events) == TextDelta(0, "Hel")
    await session.events.aclose()
    assert r.upstream.closed == [DEEPSEEK]
    assert r.upstream.finished == []  # the upstream generator was stopped, not drained
    [entry] = r.entries()
    assert (entry.status, entry.error_code) == (CLIENT_CLOSED, "client_closed")
    assert (entry.input_tokens, entry.output_tokens, entry.estimated) == (7, 1, True)  # "Hel" so far


class LimitsDownAtTheEnd(LocalLimiter):
    """Limits that admitted the call, then cannot be reached when it ends (Redis gone, limits "closed")."""

    async def finish(self, slot_key: str | None, usage: list[Check]) -> None:  # type: ignore[override]
        raise UpstreamUnavailable("The gateway's rate-limit store is unavailable.", code="limits_unavailable")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_served_call_is_answered_even_if_its_limits_cannot_be_released(catalog: Catalog, stream: bool) -> None:
    """The call was served and settled (charged): the caller must get its answer, not a 503 it would retry."""
    r = rig(catalog, {DEEPSEEK: Script(response=answer("Hi", Usage(5, 1)), events=STREAM)})
    limiter = LimitsDownAtTheEnd()
    gateway = Gateway(
        resolve(catalog, {"DEEPSEEK_API_KEY": "k3"}, {"openai"}),
        r.upstream,
        r.log,
        r.ledger,
        catalog.billing,
        admission=Admission(limiter, LimitPolicy()),
    )
    if stream:
        session = await gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-limits-down")
        assert len(await collect(session.events)) == len(STREAM)
    else:
        completion = await gateway.complete(CALLER, request(DEEPSEEK), "req-limits-down")
        assert completion.usage.output_tokens == 1
    [settlement] = r.ledger.settlements
    assert settlement.entry.status == 200 and settlement.charge > 0


async def test_a_stream_closed_before_it_is_read_is_settled_once(catalog: Catalog) -> None:
    """A server that fails before it reads the first event (the caller reset its HTTP/2 stream while the head was
    being sent) closes the session: the call is settled, its upstream closed. An async generator that never
    started runs no `finally`, so closing only `events` used to leave the hold open and the slot taken."""
    r = rig(catalog, {DEEPSEEK: Script(events=STREAM)})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-unread")
    await session.events.aclose()
    await session.close()
    await session.close()
    assert r.upstream.closed == [DEEPSEEK]
    [settlement] = r.ledger.settlements
    assert (settlement.entry.status, settlement.entry.error_code) == (CLIENT_CLOSED, "client_closed")
    assert (settlement.entry.input_tokens, settlement.entry.output_tokens) == (7, 0)


async def test_closing_a_session_after_its_stream_ended_settles_nothing_more(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=STREAM)})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-read")
    assert len(await collect(session.events)) == len(STREAM)
    await session.close()
    [settlement] = r.ledger.settlements
    assert settlement.entry.status == 200


class CloseFails(FakeUpstream):
    """An upstream whose stream fails while being closed (a bug in an adapter's cleanup, say)."""

    async def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        try:
            async for event in super().stream(target, request):
                yield event
        finally:
            raise RuntimeError("cleanup failed")


async def test_a_stream_whose_upstream_fails_to_close_is_still_settled(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=STREAM)})
    upstream = CloseFails(r.upstream.scripts)
    env = {"DEEPSEEK_API_KEY": "k3"}
    admission = Admission(LocalLimiter(), LimitPolicy())
    gateway = Gateway(
        resolve(catalog, env, {"openai"}), upstream, r.log, r.ledger, catalog.billing, admission=admission
    )
    session = await gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-close-fails")
    assert await anext(session.events) == TextDelta(0, "Hel")
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await session.events.aclose()
    [settlement] = r.ledger.settlements
    assert (settlement.entry.status, settlement.entry.error_code) == (CLIENT_CLOSED, "client_closed")


async def test_an_empty_stream_is_a_success_with_no_events(catalog: Catalog) -> None:
    r = rig(catalog, {DEEPSEEK: Script(events=())})
    session = await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-16")
    assert await collect(session.events) == []
    [entry] = r.entries()
    assert entry.status == 200
    assert r.upstream.closed == [DEEPSEEK]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unexpected_error_still_settles_the_hold_uncharged(catalog: Catalog, stream: bool) -> None:
    r = rig(catalog, {DEEPSEEK: Script(error=RuntimeError("a bug in an adapter"))})
    with pytest.raises(RuntimeError):
        if stream:
            await r.gateway.open_stream(CALLER, request(DEEPSEEK, stream=True), "req-bug")
        else:
            await r.gateway.complete(CALLER, request(DEEPSEEK), "req-bug")
    [settlement] = r.ledger.settlements
    assert (settlement.charge, settlement.succeeded) == (0, False)
    assert (settlement.entry.status, settlement.entry.error_code) == (500, "internal_error")
