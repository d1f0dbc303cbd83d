"""aipower/gateway/health.py: circuit breakers (closed -> open -> half-open -> closed) and latency averages.

Time is an injectable clock: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace

import pytest

from aipower.catalog import Target, load
from aipower.errors import UpstreamError
from aipower.gateway.admission import Admission, LimitPolicy
from aipower.gateway.deployments import resolve
from aipower.gateway.health import Breaker, BreakerRules, MemoryHealthStore, admit, record, record_speed, state
from aipower.gateway.limits import LocalLimiter
from aipower.gateway.protocols import Caller, CallOutcome
from aipower.gateway.routing import Router
from aipower.gateway.service import Gateway
from aipower.messages import (
    ChatRequest,
    ChatResponse,
    Finish,
    Message,
    StreamEvent,
    Text,
    TextDelta,
    Usage,
    UsageReport,
)
from tests.gateway.test_service import FakeUpstream as ScriptedUpstream
from tests.gateway.test_service import MemoryLedger, MemoryLog, Script, answer

DEP = "deepseek/deepseek-chat@deepseek"
RULES = BreakerRules(failures=3, cooldown=30.0, alpha=0.5)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def fail() -> CallOutcome:
    return CallOutcome(DEP, ok=False)


def ok(ttft: float | None = None, tokens_per_s: float | None = None) -> CallOutcome:
    return CallOutcome(DEP, ok=True, ttft=ttft, tokens_per_s=tokens_per_s)


async def states(store: MemoryHealthStore) -> str:
    return (await store.read([DEP]))[DEP].state


async def test_a_breaker_opens_after_n_consecutive_failures_skips_probes_once_and_closes() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(2):
        await store.record(fail())
    assert await states(store) == "closed" and await store.admit(DEP)
    await store.record(fail())  # the third in a row
    assert await states(store) == "open"
    assert not await store.admit(DEP)  # skipped during the cool-down
    health = (await store.read([DEP]))[DEP]
    assert health.retry_in == 30.0 and health.consecutive_failures == 3
    clock.now += 29.9
    assert not await store.admit(DEP)
    clock.now += 0.1
    assert await states(store) == "half-open"
    assert await store.admit(DEP)  # the one probe
    assert not await store.admit(DEP)  # a second caller is still kept away while the probe runs
    await store.record(ok())
    assert await states(store) == "closed"
    assert await store.admit(DEP) and await store.admit(DEP)


async def test_a_failed_probe_opens_the_breaker_for_another_cool_down() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(3):
        await store.record(fail())
    clock.now += 30
    assert await store.admit(DEP)
    await store.record(fail())
    assert await states(store) == "open"
    assert (await store.read([DEP]))[DEP].retry_in == 30.0
    clock.now += 30
    assert await states(store) == "half-open"


async def test_a_probe_that_never_reports_is_released_after_a_cool_down() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(3):
        await store.record(fail())
    clock.now += 30
    assert await store.admit(DEP)  # this caller goes away without an outcome
    clock.now += 29
    assert not await store.admit(DEP)
    clock.now += 1
    assert await store.admit(DEP)


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    store = MemoryHealthStore(RULES, Clock())
    for outcome in (fail(), fail(), ok(), fail(), fail()):
        await store.record(outcome)
    health = (await store.read([DEP]))[DEP]
    assert (health.state, health.consecutive_failures, health.calls, health.failures) == ("closed", 2, 5, 4)


async def test_error_rate_and_latency_are_moving_averages() -> None:
    store = MemoryHealthStore(RULES, Clock())
    await store.record(ok(ttft=0.2, tokens_per_s=100))
    health = (await store.read([DEP]))[DEP]
    assert (health.ttft_ms, health.tokens_per_s, health.error_rate) == (pytest.approx(200), 100, 0)
    await store.record(ok(ttft=0.4))  # alpha 0.5: halfway to the new sample; tokens/s unchanged
    await store.record(fail())
    health = (await store.read([DEP]))[DEP]
    assert health.ttft_ms == pytest.approx(300)
    assert health.tokens_per_s == 100
    assert health.error_rate == pytest.approx(0.5)


async def test_an_unknown_deployment_reads_as_closed_and_untouched() -> None:
    health = (await MemoryHealthStore().read(["x@y"]))["x@y"]
    assert (health.state, health.calls, health.ttft_ms, health.retry_in) == ("closed", 0, None, None)


async def test_a_speed_sample_moves_only_the_tokens_per_second_average() -> None:
    store = MemoryHealthStore(RULES, Clock())
    await store.record(ok(ttft=0.2))
    await store.record_speed(DEP, 80)
    await store.record_speed(DEP, 40)  # alpha 0.5
    health = (await store.read([DEP]))[DEP]
    assert (health.tokens_per_s, health.ttft_ms, health.calls) == (60, pytest.approx(200), 1)
    assert record_speed(Breaker(), 25.0, RULES).tokens_per_s == 25.0


def test_the_pure_functions_agree_with_the_store() -> None:
    breaker = Breaker()
    for now in (1.0, 2.0, 3.0):
        breaker = record(breaker, fail(), now, RULES)
    assert state(breaker, 3.0, RULES) == "open" and breaker.opened_at == 3.0
    assert admit(breaker, 32.9, RULES)[0] is False
    allowed, probing = admit(breaker, 33.0, RULES)
    assert allowed and probing.probe_at == 33.0
    assert state(record(probing, ok(), 34.0, RULES), 34.0, RULES) == "closed"


# ---------------------------------------------------------------- the breaker inside the gateway's failover loop


@dataclass
class SlowUpstream(ScriptedUpstream):
    """Each call takes `seconds` of the injected clock (no real waiting)."""

    clock: Clock = field(default_factory=Clock)
    seconds: float = 0.0

    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse:
        self.clock.now += self.seconds
        return await super().complete(target, request)

    async def stream(self, target: Target, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Each event arrives `seconds` after the one before (the first, `seconds` after the call)."""
        async for event in super().stream(target, request):
            self.clock.now += self.seconds
            yield event


def gateway_rig(
    scripts: dict[str, Script], budget: float = 30.0, seconds: float = 0.0
) -> tuple[Gateway, SlowUpstream, Router]:
    catalog = load()
    deployments = resolve(
        catalog, {"ZHIPU_API_KEY": "k1", "DOUBAO_API_KEY": "k2", "DEEPSEEK_API_KEY": "k3"}, {"openai"}
    )
    upstream = SlowUpstream(scripts, seconds=seconds)
    router = Router(deployments, MemoryHealthStore(RULES, upstream.clock), clock=upstream.clock, budget=budget)
    gateway = Gateway(
        deployments,
        upstream,
        MemoryLog(),
        MemoryLedger(),
        catalog.billing,
        admission=Admission(LocalLimiter(), LimitPolicy()),
        router=router,
    )
    return gateway, upstream, router


def chat(model: str, *fallbacks: str) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", parts=(Text("hi"),)),), fallback_models=fallbacks)


ZHIPU, DOUBAO, DEEPSEEK = "zhipu/glm-4-flash", "doubao/doubao-pro-256k", "deepseek/deepseek-chat"
CALLER = Caller(key_id="key_test", user_id=7)


async def test_an_open_breaker_is_skipped_by_the_gateway_then_probed_and_closed() -> None:
    down = Script(error=UpstreamError("down", status=503, type="x", code="upstream_unavailable", retryable=True))
    good = Script(response=answer("ok", Usage(3, 2)))
    gateway, upstream, router = gateway_rig({ZHIPU: down, DOUBAO: good})
    for n in range(3):
        done = await gateway.complete(CALLER, chat("auto-free"), f"r{n}")
        assert done.model.id == DOUBAO
    assert upstream.calls == [ZHIPU, DOUBAO] * 3
    upstream.calls.clear()
    done = await gateway.complete(CALLER, chat("auto-free"), "r3")  # zhipu's breaker is open: not even tried
    assert upstream.calls == [DOUBAO] and done.route == "auto-free: cheapest under $0.50/M -> " + DOUBAO
    upstream.clock.now += RULES.cooldown
    upstream.scripts[ZHIPU] = good
    upstream.calls.clear()
    done = await gateway.complete(CALLER, chat("auto-free"), "r4")  # half-open: one probe, which succeeds
    assert upstream.calls == [ZHIPU] and done.model.id == ZHIPU
    report = {target.deployment: health for target, health in await router.report()}
    assert report[f"{ZHIPU}@zhipu"].state == "closed"
    assert report[f"{DOUBAO}@doubao"].calls == 4


async def test_no_new_attempt_starts_once_the_failover_budget_is_spent() -> None:
    down = Script(error=UpstreamError("slow", status=503, type="x", code="upstream_unavailable", retryable=True))
    scripts = {ZHIPU: down, DOUBAO: down, DEEPSEEK: Script(response=answer("ok", Usage(3, 2)))}
    gateway, upstream, _ = gateway_rig(scripts, budget=10.0, seconds=6.0)
    with pytest.raises(UpstreamError):
        await gateway.complete(CALLER, chat(ZHIPU, DOUBAO, DEEPSEEK), "r1")
    assert upstream.calls == [ZHIPU, DOUBAO]  # 12s spent after two attempts: deepseek is never tried
    gateway, upstream, _ = gateway_rig(scripts, budget=13.0, seconds=6.0)
    assert (await gateway.complete(CALLER, chat(ZHIPU, DOUBAO, DEEPSEEK), "r2")).model.id == DEEPSEEK


async def test_a_non_retryable_error_does_not_count_against_the_deployment() -> None:
    bad = Script(error=UpstreamError("bad", status=400, type="x", code="upstream_invalid_request", retryable=False))
    gateway, upstream, router = gateway_rig({ZHIPU: bad})
    for n in range(4):
        with pytest.raises(UpstreamError):
            await gateway.complete(CALLER, chat(ZHIPU, DOUBAO), f"r{n}")
    assert upstream.calls == [ZHIPU] * 4  # never failed over, never tripped
    report = {target.deployment: health for target, health in await router.report()}
    assert (report[f"{ZHIPU}@zhipu"].state, report[f"{ZHIPU}@zhipu"].failures) == ("closed", 0)


async def test_streams_record_time_to_first_token() -> None:
    gateway, _, router = gateway_rig({DEEPSEEK: Script(events=(TextDelta(0, "hi"), Finish(0, "stop")))})
    session = await gateway.open_stream(CALLER, replace(chat(DEEPSEEK), stream=True), "s1")
    assert [e async for e in session.events]
    report = {target.deployment: health for target, health in await router.report()}
    assert report[f"{DEEPSEEK}@deepseek"].ttft_ms is not None and report[f"{DEEPSEEK}@deepseek"].calls == 1


SLOW_STREAM = (TextDelta(0, "Once"), TextDelta(0, " upon a time"), Finish(0, "stop"), UsageReport(Usage(5, 40)))


async def test_streams_record_tokens_per_second_between_their_first_and_last_event() -> None:
    gateway, _, router = gateway_rig({DEEPSEEK: Script(events=SLOW_STREAM)}, seconds=0.5)
    session = await gateway.open_stream(CALLER, replace(chat(DEEPSEEK), stream=True), "s1")
    assert len([e async for e in session.events]) == 4
    health = {target.deployment: h for target, h in await router.report()}[f"{DEEPSEEK}@deepseek"]
    assert health.ttft_ms == pytest.approx(500)  # the first event came 0.5s after the call
    assert health.tokens_per_s == pytest.approx(40 / 1.5)  # 40 output tokens over the next three events' 1.5s
    assert health.calls == 1  # the speed sample is not another attempt


async def test_a_stream_the_caller_leaves_records_no_speed() -> None:
    gateway, _, router = gateway_rig({DEEPSEEK: Script(events=SLOW_STREAM)}, seconds=0.5)
    session = await gateway.open_stream(CALLER, replace(chat(DEEPSEEK), stream=True), "s1")
    assert isinstance(await anext(session.events), TextDelta)
    await session.events.aclose()
    health = {target.deployment: h for target, h in await router.report()}[f"{DEEPSEEK}@deepseek"]
    assert (health.ttft_ms is not None, health.tokens_per_s) == (True, None)


async def test_auto_fast_ranks_by_measured_stream_speed_over_the_catalog_priors() -> None:
    """Priors: glm-4-flash 0.5s + 512/100 = 5.6s beats doubao 0.6s + 512/80 = 7.0s. Measured: glm-4-flash's
    streams make 40 tokens in 1.5s (0.5s + 512/26.7 = 19.7s), so auto-fast moves to doubao."""
    scripts = {ZHIPU: Script(events=SLOW_STREAM), DOUBAO: Script(events=SLOW_STREAM)}
    gateway, upstream, _ = gateway_rig(scripts, seconds=0.5)
    fast = replace(chat("auto-fast"), stream=True)
    first = await gateway.open_stream(CALLER, fast, "s1")
    assert first.model.id == ZHIPU and [e async for e in first.events]
    second = await gateway.open_stream(CALLER, fast, "s2")
    assert second.model.id == DOUBAO and second.route == f"auto-fast: lowest latency -> {DOUBAO}"
    assert [e async for e in second.events] and upstream.calls == [ZHIPU, DOUBAO]
